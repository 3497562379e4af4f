"""GPU numbers under KERAS_BACKEND=jax, with torchvision in the same run when importable.

    KERAS_BACKEND=jax python bench/gpu.py [--size 640] [--batch 8] [--runs 20] [--out DIR]

For the lent GPU machine, which has JAX and torchvision but no TensorFlow. Measures,
for RetinaNet R50-FPN and Faster R-CNN R50-FPN (random init, 80 classes):
inference latency at batch 1 (`predict_on_batch`: forward + decoding + NMS, jitted)
and a training step at --batch (`train_on_batch`), median of --runs after warm-up;
then torchvision's retinanet_resnet50_fpn / fasterrcnn_resnet50_fpn (weights=None,
min/max size fixed to --size) doing the same work. Prints a table and JSON lines
(also to DIR/gpu.jsonl).
"""

import argparse
import json
import os
import statistics
import sys
import time
import traceback

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def median_ms(fn, runs, sync):
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


def targets(batch, size, rng):
    xy = rng.uniform(0, size * 0.7, (batch, 4, 2))
    wh = rng.uniform(size * 0.05, size * 0.3, (batch, 4, 2))
    return (np.concatenate([xy, np.minimum(xy + wh, size)], -1).astype("float32"),
            rng.integers(0, 80, (batch, 4)).astype("int32"))


def ours(head, args, rows):
    import jax
    import keras

    from fpn_keras.models.detector import FPNDetector

    def sync():
        (jax.device_put(0.0) + 0).block_until_ready()

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = FPNDetector(head=head)
    image = rng.uniform(0, 255, (1, args.size, args.size, 3)).astype("float32")
    start = time.perf_counter()
    model.predict_on_batch(image)
    compile_s = time.perf_counter() - start
    print(f"[{head}] first predict (trace + compile) {compile_s:.1f} s", flush=True)
    med, low = median_ms(lambda: jax.block_until_ready(model.predict_on_batch(image)), args.runs, sync)
    rows.append({"impl": "fpn_keras (JAX)", "model": head, "case": "predict batch 1", "median_ms": med,
                 "min_ms": low, "first_call_s": compile_s, "device": str(jax.devices()[0])})
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=True)
    images = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype("float32")
    boxes, labels = targets(args.batch, args.size, rng)
    y = {"boxes": boxes, "labels": labels}
    start = time.perf_counter()
    losses = [float(model.train_on_batch(images, y, return_dict=True)["loss"])]
    print(f"[{head}] first train step (trace + compile) {time.perf_counter() - start:.1f} s", flush=True)
    med, low = median_ms(lambda: losses.append(float(model.train_on_batch(images, y, return_dict=True)["loss"])), max(3, args.runs // 2),
                         sync)
    rows.append({"impl": "fpn_keras (JAX)", "model": head, "case": f"train step batch {args.batch}",
                 "median_ms": med, "min_ms": low, "images_per_s": args.batch * 1000 / med,
                 "loss_first": losses[0], "loss_last": losses[-1], "device": str(jax.devices()[0])})


def torchvision_models(head, args, rows):
    import torch
    import torchvision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    build = {"retinanet": torchvision.models.detection.retinanet_resnet50_fpn,
             "faster_rcnn": torchvision.models.detection.fasterrcnn_resnet50_fpn}[head]
    model = build(weights=None, weights_backbone=None, min_size=args.size, max_size=args.size).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    image = torch.tensor(rng.uniform(0, 1, (3, args.size, args.size)), dtype=torch.float32, device=device)
    model.eval()
    with torch.no_grad():
        med, low = median_ms(lambda: model([image]), args.runs, sync)
    rows.append({"impl": "torchvision", "model": head, "case": "predict batch 1", "median_ms": med,
                 "min_ms": low, "device": device})
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = [torch.tensor(rng.uniform(0, 1, (3, args.size, args.size)), dtype=torch.float32, device=device)
              for _ in range(args.batch)]
    boxes, labels = targets(args.batch, args.size, rng)
    tgts = [{"boxes": torch.tensor(b, device=device), "labels": torch.tensor(l + 1, dtype=torch.int64, device=device)}
            for b, l in zip(boxes, labels)]

    def step():
        optimizer.zero_grad()
        loss = sum(model(images, tgts).values())
        loss.backward()
        optimizer.step()

    med, low = median_ms(step, max(3, args.runs // 2), sync)
    rows.append({"impl": "torchvision", "model": head, "case": f"train step batch {args.batch}",
                 "median_ms": med, "min_ms": low, "images_per_s": args.batch * 1000 / med, "device": device})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--heads", default="retinanet,faster_rcnn")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows = []
    for head in args.heads.split(","):
        for fn in (ours, torchvision_models):
            try:
                fn(head, args, rows)
            except Exception as error:  # keep measuring the others
                traceback.print_exc()
                rows.append({"impl": fn.__name__, "model": head, "error": f"{type(error).__name__}: {error}"})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'impl':<18} {'model':<12} {'case':<20} {'median ms':>10} {'img/s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['impl']:<18} {r['model']:<12} error: {r['error'][:60]}")
        else:
            ips = f"{r['images_per_s']:.1f}" if "images_per_s" in r else ""
            print(f"{r['impl']:<18} {r['model']:<12} {r['case']:<20} {r['median_ms']:>10.1f} {ips:>8}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps({"bench": "gpu", "size": args.size, **r}) + "\n")


if __name__ == "__main__":
    main()
