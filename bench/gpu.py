"""GPU numbers under KERAS_BACKEND=jax, with torchvision in the same run when importable.

    python bench/gpu.py [--height 800 --width 1344] [--batch 8] [--precision bfloat16]
                        [--runs 10] [--timeout 180] [--out DIR]

For the lent GPU machine, which has JAX and torchvision but no TensorFlow (this
script never imports it). For RetinaNet R50-FPN and Faster R-CNN R50-FPN (random
init, 80 classes ours, 91 torchvision's), each case in its own subprocess with
its own time limit, so one slow compile cannot cost the others:

- inference: batch 1, `predict_on_batch` (forward + decoding + NMS, jitted) /
  torchvision's `model.eval()` + `inference_mode`; median and min of --runs
  after 2 warm-up calls; the first call (trace + XLA compile) is reported apart.
- inference at batch --batch too (img/s), and where batch-1 time goes: the backbone
  alone, the forward pass, and decoding + NMS (= predict - forward); --trace DIR adds a
  JAX profiler trace of three predict calls.
- training: batch --batch, `train_on_batch` (jitted) / torchvision's
  forward + backward + SGD step; median of --runs // 2 (>= 3) after warm-up.

--precision bfloat16: ours under the Keras policy "mixed_bfloat16" (float32
variables and head outputs), torchvision under `torch.autocast("cuda",
torch.bfloat16)`. 800x1344 is 800x1333 padded to a multiple of 32, what
torchvision's transform gives (min_size=800, max_size=1344: no resize).
Prints progress with timestamps, a table, and JSON lines (DIR/gpu.jsonl).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

START = time.perf_counter()


def log(message):
    print(f"[{time.perf_counter() - START:7.1f} s] {message}", flush=True)


def timed(fn, runs, sync):
    """(median ms, min ms) of `runs` calls after two warm-up calls."""
    fn()
    fn()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def targets(batch, height, width, rng):
    size = np.array([width, height, width, height], "float32")
    xy = rng.uniform(0, 0.7, (batch, 4, 2))
    wh = rng.uniform(0.05, 0.3, (batch, 4, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, 1.0)], -1) * size
    return boxes.astype("float32"), rng.integers(0, 80, (batch, 4)).astype("int32")


def ours(head, args):
    os.environ["KERAS_BACKEND"] = "jax"
    sys.modules["tensorflow"] = None  # as on the GPU machine: never imported
    import jax
    import keras

    from fpn_keras import FPNDetector

    if args.precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    device = str(jax.devices()[0])
    log(f"ours {head}: keras {keras.__version__}, jax {jax.__version__}, {device}")

    def sync():
        (jax.device_put(0.0) + 0).block_until_ready()

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = FPNDetector(head=head, num_classes=80)
    image = rng.uniform(0, 255, (1, args.height, args.width, 3)).astype("float32")
    start = time.perf_counter()
    jax.block_until_ready(model.predict_on_batch(image))
    first = time.perf_counter() - start
    log(f"ours {head}: first predict (trace + compile) {first:.1f} s")
    med, low = timed(lambda: jax.block_until_ready(model.predict_on_batch(image)), args.runs, sync)
    yield {"impl": "fpn_keras (JAX)", "model": head, "case": "predict batch 1", "median_ms": med,
           "min_ms": low, "first_call_s": first, "device": device}
    log(f"ours {head}: predict {med:.1f} ms")
    yield from _ours_profile(model, image, head, med, args, sync, device)
    batch = rng.uniform(0, 255, (args.batch, args.height, args.width, 3)).astype("float32")
    jax.block_until_ready(model.predict_on_batch(batch))
    med8, low8 = timed(lambda: jax.block_until_ready(model.predict_on_batch(batch)), args.runs, sync)
    yield {"impl": "fpn_keras (JAX)", "model": head, "case": f"predict batch {args.batch}", "median_ms": med8,
           "min_ms": low8, "images_per_s": args.batch * 1000 / med8, "device": device}
    log(f"ours {head}: predict batch {args.batch} {med8:.1f} ms")

    model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9))
    images = rng.uniform(0, 255, (args.batch, args.height, args.width, 3)).astype("float32")
    boxes, labels = targets(args.batch, args.height, args.width, rng)
    y = {"boxes": boxes, "labels": labels}
    losses = []

    def step():
        losses.append(model.train_on_batch(images, y, return_dict=True)["loss"])

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    log(f"ours {head}: first train step (trace + compile) {first:.1f} s")
    med, low = timed(step, max(3, args.runs // 2), sync)
    losses = [float(v) for v in losses]
    yield {"impl": "fpn_keras (JAX)", "model": head, "case": f"train batch {args.batch}",
           "median_ms": med, "min_ms": low, "images_per_s": args.batch * 1000 / med,
           "first_call_s": first, "loss_first": losses[0], "loss_last": losses[-1], "device": device}


def _ours_profile(model, image, head, predict_ms, args, sync, device):
    """Where batch-1 inference time goes: the backbone alone (C2-C5), the whole forward pass
    (backbone + FPN + head towers: `model(x)`), and predict; decoding + NMS + top-k =
    predict - forward. Each jitted on its own; --trace DIR also writes a JAX profiler trace
    of 3 predict calls (TensorBoard / Perfetto) for the per-kernel view."""
    import jax

    def jitted(layer):
        variables = (layer.trainable_variables, layer.non_trainable_variables)
        function = jax.jit(lambda tv, ntv, x: layer.stateless_call(tv, ntv, x, training=False)[0])
        values = tuple([v.value for v in group] for group in variables)
        return lambda: jax.block_until_ready(function(*values, image))

    stages = {"backbone (C2-C5)": jitted(model.backbone), "forward (backbone+FPN+head)": jitted(model)}
    measured = {}
    for name, call in stages.items():
        call()
        measured[name], low = timed(call, args.runs, sync)
        yield {"impl": "fpn_keras (JAX)", "model": head, "case": f"stage: {name}", "median_ms": measured[name],
               "min_ms": low, "device": device}
        log(f"ours {head}: {name} {measured[name]:.1f} ms")
    post = predict_ms - measured["forward (backbone+FPN+head)"]
    yield {"impl": "fpn_keras (JAX)", "model": head, "case": "stage: decode+NMS (predict - forward)",
           "median_ms": post, "min_ms": post, "device": device}
    if args.trace:
        os.makedirs(args.trace, exist_ok=True)
        with jax.profiler.trace(os.path.join(args.trace, f"ours_{head}")):
            for _ in range(3):
                jax.block_until_ready(model.predict_on_batch(image))
        log(f"ours {head}: JAX trace in {args.trace}")


def theirs(head, args):
    import torch
    import torchvision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    log(f"torchvision {head}: torch {torch.__version__}, torchvision {torchvision.__version__}, {name}")
    build = {"retinanet": torchvision.models.detection.retinanet_resnet50_fpn,
             "faster_rcnn": torchvision.models.detection.fasterrcnn_resnet50_fpn}[head]
    size = min(args.height, args.width), max(args.height, args.width)
    model = build(weights=None, weights_backbone=None, min_size=size[0], max_size=size[1]).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if args.precision == "bfloat16" \
        else (lambda: torch.autocast(device, enabled=False))
    rng = np.random.default_rng(0)

    def image():
        return torch.tensor(rng.uniform(0, 1, (3, args.height, args.width)), dtype=torch.float32,
                            device=device)

    one = image()
    model.eval()

    def predict():
        with torch.inference_mode(), autocast():
            model([one])

    med, low = timed(predict, args.runs, sync)
    yield {"impl": "torchvision", "model": head, "case": "predict batch 1", "median_ms": med,
           "min_ms": low, "device": name}
    log(f"torchvision {head}: predict {med:.1f} ms")
    batch = [image() for _ in range(args.batch)]

    def predict_batch():
        with torch.inference_mode(), autocast():
            model(batch)

    med8, low8 = timed(predict_batch, args.runs, sync)
    yield {"impl": "torchvision", "model": head, "case": f"predict batch {args.batch}", "median_ms": med8,
           "min_ms": low8, "images_per_s": args.batch * 1000 / med8, "device": name}
    body = model.backbone.body  # ResNet-50 C2-C5, as ours "backbone" stage
    x = one[None]

    def backbone():
        with torch.inference_mode(), autocast():
            body(x)

    bmed, blow = timed(backbone, args.runs, sync)
    yield {"impl": "torchvision", "model": head, "case": "stage: backbone (C2-C5)", "median_ms": bmed,
           "min_ms": blow, "device": name}
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    images = [image() for _ in range(args.batch)]
    boxes, labels = targets(args.batch, args.height, args.width, rng)
    tgts = [{"boxes": torch.tensor(b, device=device), "labels": torch.tensor(l + 1, device=device)}
            for b, l in zip(boxes, labels.astype("int64"))]

    def step():
        optimizer.zero_grad()
        with autocast():
            loss = sum(model(images, tgts).values())
        loss.backward()
        optimizer.step()

    med, low = timed(step, max(3, args.runs // 2), sync)
    yield {"impl": "torchvision", "model": head, "case": f"train batch {args.batch}",
           "median_ms": med, "min_ms": low, "images_per_s": args.batch * 1000 / med, "device": name}


def run_case(args):
    """In the child: one (impl, head) case; one JSON line per measurement."""
    impl, head = args.case.split(":")
    try:
        for row in {"ours": ours, "torchvision": theirs}[impl](head, args):
            print("ROW " + json.dumps(row), flush=True)
    except Exception as error:  # report, and let the parent carry on
        traceback.print_exc()
        print("ROW " + json.dumps({"impl": impl, "model": head, "error": f"{type(error).__name__}: {error}"}),
              flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1344)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--heads", default="retinanet,faster_rcnn")
    parser.add_argument("--impls", default="torchvision,ours")
    parser.add_argument("--timeout", type=float, default=180, help="seconds per case (subprocess)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--trace", default=None, help="write a JAX profiler trace of ours' predict here")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if args.case:
        return run_case(args)
    rows = []
    passthrough = [f"--height={args.height}", f"--width={args.width}", f"--batch={args.batch}",
                   f"--precision={args.precision}", f"--runs={args.runs}"] + \
        ([f"--trace={args.trace}"] if args.trace else [])
    for head in args.heads.split(","):
        for impl in args.impls.split(","):
            log(f"case {impl}:{head} (limit {args.timeout:.0f} s)")
            try:
                proc = subprocess.run([sys.executable, __file__, f"--case={impl}:{head}", *passthrough],
                                      capture_output=True, text=True, timeout=args.timeout)
                out, err, status = proc.stdout, proc.stderr, proc.returncode
            except subprocess.TimeoutExpired as expired:
                out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
                err = expired.stderr.decode() if isinstance(expired.stderr, bytes) else (expired.stderr or "")
                status = f"timed out after {args.timeout:.0f} s"
            got = [json.loads(line[4:]) for line in out.splitlines() if line.startswith("ROW ")]
            print("\n".join(line for line in out.splitlines() if not line.startswith("ROW ")), flush=True)
            if status != 0:
                print(err[-2500:], flush=True)
                got.append({"impl": impl, "model": head, "error": f"exit {status}"})
            for row in got:
                row = {"bench": "gpu", "height": args.height, "width": args.width,
                       "precision": args.precision, **row}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    os.makedirs(args.out, exist_ok=True)
                    with open(os.path.join(args.out, "gpu.jsonl"), "a") as f:
                        f.write(json.dumps(row) + "\n")
    print(f"\n{'impl':<16} {'model':<12} {'case':<38} {'median ms':>10} {'min ms':>8} {'img/s':>7} {'1st call s':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['impl']:<16} {r['model']:<12} error: {r['error'][:70]}")
        else:
            ips = f"{r['images_per_s']:.1f}" if "images_per_s" in r else ""
            first = f"{r['first_call_s']:.1f}" if "first_call_s" in r else ""
            print(f"{r['impl']:<16} {r['model']:<12} {r['case']:<38} {r['median_ms']:>10.1f} "
                  f"{r['min_ms']:>8.1f} {ips:>7} {first:>10}")


if __name__ == "__main__":
    main()
