"""TF profiler: where `predict` spends its time, by TensorFlow op type.

    python bench/profile_ops.py [--head faster_rcnn|retinanet] [--size 640] [--runs 5] [--top 15]

Builds the R50-FPN detector (random init), warms `predict_on_batch` up, records
--runs calls with `tf.profiler.experimental`, converts the trace with TF's own
profiler plugin (`framework_op_stats`, the table TensorBoard's profile tab
shows) and prints the host self-time per op type, per call. Self-times are
summed over TF's threads, so they add up to more than the wall time; IDLE is
time the thread pools waited. Used to find the Faster R-CNN RoIAlign hot spot
(docs/benchmarks.md).
"""

import argparse
import collections
import glob
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def op_type_self_times(logdir):
    """-> Counter {op type: host self-time in us} from the trace under `logdir`."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise RuntimeError(f"the profiler wrote no trace under {logdir}")
    data, _ = plugin.xspace_to_tools_data(paths, "framework_op_stats", {})
    tables = json.loads(data.decode() if isinstance(data, bytes) else data)
    table = tables[0] if isinstance(tables, list) else tables
    columns = [c.get("label", c.get("id")) for c in table["cols"]]
    where = columns.index("Host/device")
    op_type = columns.index("Operation Type")
    self_us = columns.index("Total self-time (us)")
    totals = collections.Counter()
    for row in table["rows"]:
        cells = [c.get("v") if isinstance(c, dict) else c for c in row["c"]]
        if cells[where] == "Host":
            totals[cells[op_type]] += float(cells[self_us] or 0.0)
    return totals


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", choices=["faster_rcnn", "retinanet"], default="faster_rcnn")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--runs", type=int, default=5, help="profiled predict calls")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=15, help="op types to print")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from fpn_keras.models.detector import FPNDetector

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(0)
    model = FPNDetector(head=args.head, num_classes=80)
    image = np.random.default_rng(0).uniform(0, 255, (1, args.size, args.size, 3)).astype("float32")
    for _ in range(3):
        model.predict_on_batch(image)
    logdir = tempfile.mkdtemp(prefix="fpn_profile_")
    tf.profiler.experimental.start(logdir)
    for _ in range(args.runs):
        model.predict_on_batch(image)
    tf.profiler.experimental.stop()
    totals = op_type_self_times(logdir)
    busy = sum(us for name, us in totals.items() if name != "IDLE")
    print(f"{args.head} R50-FPN, {args.size}x{args.size}, batch 1, {args.threads} threads: "
          f"{busy / args.runs / 1000:.1f} ms of op self-time per predict (without IDLE), trace in {logdir}")
    for name, us in totals.most_common(args.top):
        share = f"{100 * us / busy:5.1f} %" if name != "IDLE" else "      "
        print(f"{us / args.runs / 1000:9.1f} ms  {share}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
