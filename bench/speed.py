"""Inference latency and training throughput: our R50-FPN detectors vs torchvision's.

    python bench/speed.py [--runs 10] [--train-runs 4] [--json out.jsonl]
                          [--torchvision-python /tmp/tvenv/bin/python]

Ours: `FPNDetector(head="retinanet" | "faster_rcnn", backbone="resnet50")`,
random init (weights=None), 80 classes, compiled with jit_compile False and
True. Each (model, XLA) case runs in a fresh subprocess, so peak RSS
(`resource.getrusage`) is that case's alone.

- inference: `predict_on_batch` of one 640x640 image (the full path: backbone,
  FPN, head, box decoding, NMS, top-K), median and min of --runs after 2
  warm-up calls. Under jit_compile=True the heads use the generic keras.ops
  NMS / RoIAlign (TF's kernels are not XLA-compilable); should
  `predict_on_batch` still fail under XLA, the case reports the error and times
  the forward pass alone (`tf.function(jit_compile=True)` of `model(x)`).
- training: `train_on_batch` on 2 images of --train-size (512) with 4 random
  boxes each, SGD; median step time after 2 warm-up steps -> images/s.

Torchvision (`retinanet_resnet50_fpn`, `fasterrcnn_resnet50_fpn`, weights=None,
weights_backbone=None, transform min_size = max_size = the image side, so both
libraries see the same pixels): the same measurements in a subprocess of
--torchvision-python (a separate venv with torch + torchvision; the project venv
stays torch-free), `model.eval()` + `torch.inference_mode()` for inference.

--converted: both sides run the same seeded COCO-layout weights instead of random init:
the torchvision state dict of bench/torchvision_*_reference.py's numpy seeds, loaded by
torchvision (BatchNorm eps 0.0, as its COCO_V1 weights) and converted by
`fpn_keras.convert.from_torchvision` (canvas = the image side, so both see the same
pixels); inference only, `predict_on_batch` as above.

--precisions fp32,bf16,int8 (default fp32): bf16 is ours `model.with_precision("bf16")`
(mixed_bfloat16: bf16 compute, float32 weights, decoding and NMS) against torchvision
under `torch.autocast("cpu", dtype=torch.bfloat16)`; int8 is our full-integer TFLite
export (`fpn_keras.export.tflite`, calibrated on 4 random images: the ranges do not change
the speed) run by XNNPACK, against torchvision fp32 (torchvision has no quantized
detection models); our float32 TFLite export is timed beside it. Inference only.
--peak adds, in the same run: the model's FLOPs (TF profiler, `bench/peak.py`) and the
best throughput this machine reaches per precision (TF matmul and convolution, TFLite
convolutions, and our TFLite runs of the same model: float32 for fp32, int8 for int8), and
prints each case's share of that peak: FLOPs / latency / best GFLOP/s of its precision
(int8: integer operations counted as the float ones they replace).

Both sides run with 2 threads (--threads). With random init almost no score
passes the threshold, which flatters post-processing (ours and theirs);
bench/postprocess.py measures NMS with thousands of boxes above threshold.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODELS = {"retinanet": "retinanet_resnet50_fpn", "faster_rcnn": "fasterrcnn_resnet50_fpn"}


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _time(fn, runs, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def _random_targets(rng, batch, size, num_boxes=4):
    xy = rng.uniform(0, size * 0.6, (batch, num_boxes, 2))
    wh = rng.uniform(size * 0.1, size * 0.4, (batch, num_boxes, 2))
    boxes = rng.uniform(0, 1, (batch, num_boxes, 4))
    boxes[..., :2], boxes[..., 2:] = xy, xy + wh
    return boxes.astype("float32")


# ---------------------------------------------------------------- ours (TF)
def run_ours(model_name, jit, args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from fpn_keras import FPNDetector

    rng = np.random.default_rng(0)
    row = {"library": "fpn_keras", "model": model_name, "jit_compile": jit, "threads": args.threads,
           "size": args.size, "train_size": args.train_size, "tf": tf.__version__, "keras": keras.__version__}
    if args.weights:  # --converted: torchvision's weights in torchvision's layout
        from fpn_keras.convert import from_torchvision

        model = from_torchvision(MODELS[model_name], weights=args.weights, image_size=(args.size, args.size))
        row["weights"] = "converted seeded torchvision checkpoint"
    else:
        model = FPNDetector(head=model_name, backbone="resnet50", backbone_weights=None)
    image = rng.uniform(0, 255, (1, args.size, args.size, 3)).astype("float32")
    model(image)
    row["precision"] = args.precision
    if args.precision in ("int8", "tflite_fp32"):
        return _run_ours_tflite(model, image, row, args)
    if args.precision != "fp32":
        model = model.with_precision(args.precision)
    model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), jit_compile=jit)
    if not args.skip_inference:
        try:
            row["infer_median_ms"], row["infer_min_ms"] = _time(
                lambda: model.predict_on_batch(image), args.runs)
            row["infer_path"] = "predict_on_batch"
        except Exception as error:  # noqa: BLE001 (XLA cannot compile TF's NMS)
            row["predict_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            forward = tf.function(lambda x: model(x, training=False), jit_compile=jit)
            x = tf.constant(image)
            row["infer_median_ms"], row["infer_min_ms"] = _time(
                lambda: tf.nest.map_structure(lambda t: t.numpy(), forward(x)), args.runs)
            row["infer_path"] = "forward only (tf.function)"
    if not args.skip_training:
        size, batch = args.train_size, 2
        images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
        targets = {"boxes": _random_targets(rng, batch, size),
                   "labels": rng.integers(0, 80, (batch, 4)).astype("int32")}
        try:
            median, minimum = _time(lambda: model.train_on_batch(images, targets), args.train_runs)
            row["train_step_median_ms"], row["train_step_min_ms"] = median, minimum
            row["train_images_per_s"] = batch / (median / 1000)
        except Exception as error:  # noqa: BLE001
            row["train_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    row["peak_rss_mb"] = _peak_rss_mb()
    return row


def _run_ours_tflite(model, image, row, args):
    """Our TFLite export (int8: full-integer network, float decoding and NMS) run by XNNPACK."""
    import numpy as np

    from fpn_keras.export.tflite import TFLiteRunner, convert

    rng = np.random.default_rng(1)
    quantize = "int8" if args.precision == "int8" else None
    calibration = [rng.uniform(0, 255, image.shape).astype("float32") for _ in range(4)] if quantize else None
    start = time.perf_counter()
    content = convert(model, (args.size, args.size), quantize=quantize, representative_data=calibration)
    row["convert_s"] = round(time.perf_counter() - start, 1)
    row["tflite_mb"] = round(len(content) / 2 ** 20, 1)
    runner = TFLiteRunner(content, num_threads=args.threads)
    row["infer_median_ms"], row["infer_min_ms"] = _time(lambda: runner(image), args.runs)
    row["infer_path"] = f"TFLite {'int8' if quantize else 'float32'} (XNNPACK)"
    row["peak_rss_mb"] = _peak_rss_mb()
    return row


def run_flops(model_name, args):
    """{"flops": float operations of the forward pass at --size} (bench/peak.py)."""
    import tensorflow as tf

    from fpn_keras import FPNDetector
    from peak import count_flops

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    model = FPNDetector(head=model_name, backbone="resnet50", backbone_weights=None)
    return {"library": "fpn_keras", "model": model_name, "bench": "flops", "size": args.size,
            "flops": count_flops(model, args.size)}


def run_peak(args):
    from peak import measure_peaks

    return {"bench": "peak", "threads": args.threads, "gflops": measure_peaks(args.threads)}


# ------------------------------------------------------ torchvision (torch)
def run_torchvision(model_name, args):
    import numpy as np
    import torch
    import torchvision
    from torchvision.models import detection

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    builder = getattr(detection, MODELS[model_name])
    row = {"library": "torchvision", "model": MODELS[model_name], "jit_compile": False,
           "threads": args.threads, "size": args.size, "train_size": args.train_size,
           "torch": torch.__version__, "torchvision": torchvision.__version__}
    if not args.skip_inference:
        model = builder(weights=None, weights_backbone=None, min_size=args.size, max_size=args.size).eval()
        if args.weights:  # --converted: the same state dict the converted model holds
            for module in model.modules():
                if isinstance(module, (torch.nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d)):
                    module.eps = 0.0
            model.load_state_dict(torch.load(args.weights, weights_only=True), strict=True)
            row["weights"] = "seeded torchvision checkpoint"
        image = torch.from_numpy(rng.uniform(0, 1, (3, args.size, args.size)).astype("float32"))
        row["precision"] = args.precision
        bf16 = args.precision == "bf16"
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            row["infer_median_ms"], row["infer_min_ms"] = _time(lambda: model([image]), args.runs)
        row["infer_path"] = "model([image]) eval" + (" under torch.autocast(cpu, bfloat16)" if bf16 else "")
    if not args.skip_training:
        size, batch = args.train_size, 2
        model = builder(weights=None, weights_backbone=None, min_size=size, max_size=size).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
        images = [torch.from_numpy(rng.uniform(0, 1, (3, size, size)).astype("float32")) for _ in range(batch)]
        boxes = _random_targets(rng, batch, size)
        targets = [{"boxes": torch.from_numpy(boxes[i]),
                    "labels": torch.from_numpy(rng.integers(1, 91, 4).astype("int64"))} for i in range(batch)]

        def step():
            losses = model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        median, minimum = _time(step, args.train_runs)
        row["train_step_median_ms"], row["train_step_min_ms"] = median, minimum
        row["train_images_per_s"] = batch / (median / 1000)
    row["peak_rss_mb"] = _peak_rss_mb()
    return row


# ------------------------------------------------------------------ driver
def _seeded_checkpoints(model_names):
    """{model: path of a torchvision .pth with bench/torchvision_*_reference.py's seeded weights}."""
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from convert_parity import seeded_state
    from fpn_keras.convert import save_torch_checkpoint

    directory = tempfile.mkdtemp(prefix="speed_converted_")
    paths = {}
    for name in model_names:
        paths[name] = os.path.join(directory, f"{MODELS[name]}.pth")
        save_torch_checkpoint(paths[name], seeded_state(MODELS[name]))
    return paths


def _subprocess(python, argv):
    env = dict(os.environ, OMP_NUM_THREADS=str(2))
    out = subprocess.run([python, os.path.abspath(__file__), *argv], capture_output=True, text=True, env=env)
    rows = [json.loads(line[len("ROW "):]) for line in out.stdout.splitlines() if line.startswith("ROW ")]
    if not rows:
        tail = (out.stderr or out.stdout).strip().splitlines()[-5:]
        return {"error": f"exit {out.returncode}: " + " | ".join(tail)}
    return rows[0]


def _fmt(value, spec):
    if isinstance(value, (int, float)):
        return format(value, spec)
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return "-".rjust(int(width) if width else 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640, help="inference image side")
    parser.add_argument("--train-size", type=int, default=512, help="training image side")
    parser.add_argument("--runs", type=int, default=10, help="timed inference calls")
    parser.add_argument("--train-runs", type=int, default=4, help="timed training steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="retinanet,faster_rcnn")
    parser.add_argument("--jit", default="0,1", help="jit_compile settings to run (0, 1)")
    parser.add_argument("--torchvision-python", default=None,
                        help="python of a venv with torch + torchvision (default: this python, if it has them)")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--json", default=None, help="append one JSON line per result here")
    parser.add_argument("--converted", action="store_true",
                        help="both sides on the same seeded torchvision weights (ours converted); inference only")
    parser.add_argument("--precisions", default="fp32",
                        help="comma list of fp32, bf16, int8 (inference; int8: our TFLite vs torchvision fp32)")
    parser.add_argument("--peak", action="store_true",
                        help="also count FLOPs and measure this machine's best GFLOP/s: share-of-peak column")
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)  # a worker's
    parser.add_argument("--weights", default=None, help=argparse.SUPPRESS)  # set by --converted
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "ours:<model>:<jit>" | "tv:<model>"
    args = parser.parse_args(argv)

    if args.worker:
        kind, *rest = args.worker.split(":")
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        if kind == "peak":
            row = run_peak(args)
        elif kind == "flops":
            row = run_flops(rest[0], args)
        elif kind == "ours":
            row = run_ours(rest[0], rest[1] == "1", args)
        else:
            row = run_torchvision(rest[0], args)
        print("ROW " + json.dumps(row), flush=True)
        return 0

    common = ["--size", str(args.size), "--train-size", str(args.train_size), "--runs", str(args.runs),
              "--train-runs", str(args.train_runs), "--threads", str(args.threads)]
    common += ["--skip-inference"] * args.skip_inference + ["--skip-training"] * args.skip_training
    checkpoints = {}
    if args.converted:
        common += ["--skip-training"] * (not args.skip_training)
        checkpoints = _seeded_checkpoints(args.models.split(","))
    tv_python = args.torchvision_python
    if tv_python is None:
        try:
            import torchvision  # noqa: F401
            tv_python = sys.executable
        except ImportError:
            tv_python = None
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = set(precisions) - {"fp32", "bf16", "int8"}
    if unknown:
        parser.error(f"--precisions: unknown {sorted(unknown)} (fp32, bf16, int8)")
    lower = [p for p in precisions if p != "fp32"]
    if lower:  # the lower precisions are inference-only comparisons
        common_lower = common + ["--skip-training"] * (not args.skip_training)

    def case(python, worker, extra=(), **defaults):
        weights = ["--weights", checkpoints[defaults["model_key"]]] if checkpoints and "model_key" in defaults else []
        row = _subprocess(python, [*(common if not extra else common_lower), *weights, *extra, "--worker", worker])
        for key, value in defaults.items():
            if key != "model_key":
                row.setdefault(key, value)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row

    rows = []
    for model_name in args.models.split(","):
        if "fp32" in precisions:
            for jit in args.jit.split(","):
                case(sys.executable, f"ours:{model_name}:{jit}", library="fpn_keras", model=model_name,
                     jit_compile=jit == "1", precision="fp32", model_key=model_name)
            if tv_python:
                case(tv_python, f"tv:{model_name}", library="torchvision", model=MODELS[model_name],
                     precision="fp32", model_key=model_name)
        for precision in lower:
            runs = ["bf16"] if precision == "bf16" else ["int8", "tflite_fp32"]
            for ours in runs:
                case(sys.executable, f"ours:{model_name}:0", ["--precision", ours], library="fpn_keras",
                     model=model_name, jit_compile=False, precision=ours, model_key=model_name)
            if tv_python and precision == "bf16":
                case(tv_python, f"tv:{model_name}", ["--precision", "bf16"], library="torchvision",
                     model=MODELS[model_name], precision="bf16", model_key=model_name)
            if tv_python and precision == "int8" and "fp32" not in precisions:
                case(tv_python, f"tv:{model_name}", ["--precision", "fp32"], library="torchvision",
                     model=MODELS[model_name], precision="fp32", model_key=model_name)
    shares = _peak_shares(args, rows, common) if args.peak else {}
    _print_tables(args, rows, shares, tv_python)
    return 0


def _peak_shares(args, rows, common):
    """FLOPs per model and this machine's best GFLOP/s per precision (same run) -> each
    row's share of the peak of its precision (added to the rows)."""
    flops = {}
    for model_name in args.models.split(","):
        row = _subprocess(sys.executable, common + ["--worker", f"flops:{model_name}"])
        if "flops" in row:
            flops[model_name] = row["flops"]
        rows.append(row)
    peak = _subprocess(sys.executable, common + ["--worker", "peak"])
    rows.append(peak)
    best = {precision: dict(kernels) for precision, kernels in peak.get("gflops", {}).items()}
    key_of = {v: k for k, v in MODELS.items()}
    for row in rows:  # achieved GFLOP/s of every timed case
        model_key = key_of.get(row.get("model"), row.get("model"))
        if "infer_median_ms" in row and model_key in flops and row.get("infer_path", "").startswith(
                ("predict_on_batch", "TFLite", "model([image])")):
            row["achieved_gflops"] = flops[model_key] / (row["infer_median_ms"] / 1000) / 1e9
    for row in rows:  # the same model's TFLite runs count as peak candidates of their precision
        if row.get("precision") in ("tflite_fp32", "int8") and "achieved_gflops" in row:
            precision = "fp32" if row["precision"] == "tflite_fp32" else "int8"
            best.setdefault(precision, {})[f"tflite_{row['model']}_model"] = row["achieved_gflops"]
    for row in rows:
        precision = "fp32" if row.get("precision") == "tflite_fp32" else row.get("precision")
        if "achieved_gflops" in row and best.get(precision):
            row["share_of_peak"] = row["achieved_gflops"] / max(best[precision].values())
    return {"flops": flops, "best": best}


def _print_tables(args, rows, shares, tv_python):
    print(f"\nCPU, {args.threads} threads, batch 1 inference at {args.size}x{args.size}, "
          f"training batch 2 at {args.train_size}x{args.train_size} (4 boxes/image), "
          f"{'the same seeded torchvision weights (ours converted)' if args.converted else 'random init'}")
    header = (f"{'library':<12} {'model':<26} {'prec':<11} {'XLA':<4} {'infer median ms':>15} {'min ms':>8} "
              f"{'GFLOP/s':>8} {'of peak':>7} {'train img/s':>11} {'step ms':>8} {'peak RSS MB':>11}  notes")
    print(header)
    print("-" * len(header))
    timed = [r for r in rows if r.get("bench") not in ("flops", "peak")]
    for row in timed:
        notes = []
        if row.get("infer_path", "").startswith("forward"):
            notes.append("forward only: predict failed under XLA")
        if row.get("precision") == "bf16" and row.get("library") == "torchvision":
            notes.append("torch.autocast bf16")
        for key in ("error", "predict_error", "train_error"):
            if key in row:
                notes.append(f"{key}: {row[key][:80]}")
        share = row.get("share_of_peak")
        print(f"{row['library']:<12} {row['model']:<26} {row.get('precision', 'fp32'):<11} "
              f"{('yes' if row.get('jit_compile') else 'no'):<4} "
              f"{_fmt(row.get('infer_median_ms'), '15.0f')} {_fmt(row.get('infer_min_ms'), '8.0f')} "
              f"{_fmt(row.get('achieved_gflops'), '8.0f')} {(f'{share:.0%}' if share else '-'):>7} "
              f"{_fmt(row.get('train_images_per_s'), '11.2f')} {_fmt(row.get('train_step_median_ms'), '8.0f')} "
              f"{_fmt(row.get('peak_rss_mb'), '11.0f')}  {'; '.join(notes)}")
    if shares:
        print("\nFLOPs of the forward pass (TF profiler): " + ", ".join(
            f"{m} {f / 1e9:.1f} GFLOP" for m, f in shares["flops"].items()))
        print("best measured GFLOP/s (same run): " + "; ".join(
            f"{p}: " + ", ".join(f"{k} {v:.0f}" for k, v in kernels.items()) for p, kernels in shares["best"].items()))
    theirs = {(r["model"], r.get("precision", "fp32")): r for r in timed
              if r.get("library") == "torchvision" and "error" not in r}
    ratios = []
    for row in timed:
        if row.get("library") != "fpn_keras":
            continue
        precision = row.get("precision", "fp32")
        if precision == "tflite_fp32":
            continue
        # int8 (TFLite) against torchvision fp32: torchvision has no quantized detection models.
        ref = theirs.get((MODELS.get(row["model"]), "fp32" if precision == "int8" else precision))
        if ref is None:
            continue
        ratio = {"bench": "speed_ratio", "model": row["model"], "jit_compile": row.get("jit_compile"),
                 "precision": precision, "against": f"torchvision {ref.get('precision', 'fp32')}"}
        if "infer_median_ms" in row and "infer_median_ms" in ref and (
                row.get("infer_path") == "predict_on_batch" or precision == "int8"):
            ratio["latency_ours_over_theirs"] = row["infer_median_ms"] / ref["infer_median_ms"]
        if "train_images_per_s" in row and "train_images_per_s" in ref:
            ratio["throughput_ours_over_theirs"] = row["train_images_per_s"] / ref["train_images_per_s"]
        ratios.append(ratio)
    if ratios:
        print("\nours / torchvision (latency: <= 1.0 is as fast or faster; throughput: >= 1.0 is as fast or faster)")
        for r in ratios:
            print(f"  {r['model']:<12} {r['precision']:<5} vs {r['against']:<17} XLA={'yes' if r['jit_compile'] else 'no ':<3}"
                  f"  latency ratio {_fmt(r.get('latency_ours_over_theirs'), '.2f')}   training throughput ratio "
                  f"{_fmt(r.get('throughput_ours_over_theirs'), '.2f')}")
    elif not tv_python:
        print("\ntorchvision not importable: pass --torchvision-python /path/to/venv/bin/python for the comparison")
    if args.json:
        with open(args.json, "a") as f:
            for row in rows + ratios:
                f.write(json.dumps({"bench": "speed", **row} if row.get("bench") is None else row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
