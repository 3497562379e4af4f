"""Full-size parity of the converted torchvision detectors; writes docs/pretrained.md.

    python bench/convert_parity.py [--torch-python /tmp/tvenv/bin/python] [--models a,b]
                                   [--out docs/pretrained.md] [--runs 3]

This machine cannot download the COCO checkpoints, so each model gets the seeded weights
of bench/torchvision_*_reference.py (numpy seeds; confident detections by construction,
see fpn_keras/convert/*_layout.py), written as a torchvision `.pth`. Then, in the same run:

- torchvision (a subprocess of --torch-python, a venv with torch, torchvision and
  scikit-image): `model(photos)` at its defaults (GeneralizedRCNNTransform min_size 800,
  max_size 1333), in eval mode, on scikit-image's astronaut (512x512) + coffee (400x600)
  as one batch and chelsea (300x451) alone; its FPN levels are captured with a hook;
- ours (this process): `from_torchvision(model, weights=that .pth)` (timed: the
  conversion), `predict_images` on the same photos (as torchvision resizes and pads), and
  backbone + FPN on our own padded batch.

Measured per model: the largest relative difference of any FPN level (max |ours - theirs|
/ max |theirs| per level and batch), the share of each side's detections that the other
has (same label, score within 1e-4, IoU >= 0.99 or every coordinate within 0.01 px: boxes
clipped to a line at the image's edge have no area), conversion time, checkpoint and
`.keras` sizes, and the predict time of both on the first batch (median of --runs after
one warm-up, 2 threads each, same weights, same photos).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # torchvision_helpers: the converter tests' matcher
from speed import _time  # noqa: E402
from torchvision_reference import SEED, load_by_path  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea")
BATCHES = ((0, 1), (2,))
# model: (layout module, seeded state function, published COCO box AP of its COCO_V1 weights,
# BatchNorm eps of those weights: 0.0 where torchvision calls overwrite_eps)
MODELS = {
    "retinanet_resnet50_fpn": ("retinanet_layout", "random_retinanet_state_dict", 36.4, 0.0),
    "fasterrcnn_resnet50_fpn": ("fasterrcnn_layout", "random_fasterrcnn_state_dict", 37.0, 0.0),
    "retinanet_resnet50_fpn_v2": ("retinanet_layout", "random_retinanet_v2_state_dict", 41.5, 1e-5),
    "fasterrcnn_resnet50_fpn_v2": ("fasterrcnn_layout", "random_fasterrcnn_v2_state_dict", 46.7, 1e-5),
    "fasterrcnn_mobilenet_v3_large_fpn": ("mobilenet_v3_layout", "random_fasterrcnn_mobilenet_state_dict", 32.8,
                                          1e-5),
}
_RETINANET_LEVELS = {"0": "P3", "1": "P4", "2": "P5", "p6": "P6", "p7": "P7"}
_RCNN_LEVELS = {"0": "P2", "1": "P3", "2": "P4", "3": "P5", "pool": "P6"}
LEVEL_NAMES = {"retinanet_resnet50_fpn": _RETINANET_LEVELS, "retinanet_resnet50_fpn_v2": _RETINANET_LEVELS,
               "fasterrcnn_resnet50_fpn": _RCNN_LEVELS, "fasterrcnn_resnet50_fpn_v2": _RCNN_LEVELS,
               "fasterrcnn_mobilenet_v3_large_fpn": {"0": "P4", "1": "P5", "pool": "P6"}}


def seeded_state(model):
    module, function = MODELS[model][:2]
    if module == "mobilenet_v3_layout":
        return load_by_path(module).random_fasterrcnn_mobilenet_state_dict(SEED)
    backbone = load_by_path("resnet_layout").random_resnet_state_dict(50, SEED, prefix="backbone.body.")
    return getattr(load_by_path(module), function)(backbone, SEED)


def _median_ms(fn, runs):
    return _time(fn, runs, warmup=1)[0]  # bench/speed.py's timer


def torch_worker(model, checkpoint, out, runs):
    """torchvision's side, run under --torch-python: writes `out` (.npz)."""
    import skimage.data
    import torch
    import torchvision

    torch.set_num_threads(2)
    net = getattr(torchvision.models.detection, model)(weights=None, weights_backbone=None)
    for module in net.modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d)):
            module.eps = MODELS[model][3]
    net.load_state_dict(torch.load(checkpoint, weights_only=True), strict=True)
    net.eval()
    photos = [getattr(skimage.data, name)() for name in PHOTOS]
    result = {"versions": np.array(f"torch {torch.__version__}, torchvision {torchvision.__version__}")}
    result.update({f"photo/{name}": photo for name, photo in zip(PHOTOS, photos)})  # ours reads these
    for b, indices in enumerate(BATCHES):
        images = [torch.from_numpy(photos[i].copy()).permute(2, 0, 1).float() / 255.0 for i in indices]
        captured = {}
        hook = net.backbone.register_forward_hook(lambda m, inputs, output: captured.update(features=output))
        with torch.inference_mode():
            detections = net(images)
        hook.remove()
        for name, feature in captured["features"].items():
            result[f"{b}/{LEVEL_NAMES[model][name]}"] = feature.permute(0, 2, 3, 1).numpy()
        for i, detection in zip(indices, detections):
            for key in ("boxes", "scores", "labels"):
                result[f"{PHOTOS[i]}/{key}"] = detection[key].numpy()
        if b == 0:
            with torch.inference_mode():
                result["predict_ms"] = np.array(_median_ms(lambda: net(images), runs))
    np.savez(out, **result)


def _matched(ours, theirs):
    """Share of `theirs` detections that `ours` has (tests/torchvision_helpers.py's matcher, boxes
    clipped to a line at the image's edge matched within 0.01 px)."""
    from torchvision_helpers import unmatched_detections

    return 1.0 - len(unmatched_detections(ours, theirs, px=0.01)) / max(len(theirs["scores"]), 1)


def compare(model, torch_python, runs, directory):
    import keras

    from fpn_keras.convert import from_torchvision, save_torch_checkpoint
    from fpn_keras.preprocessing import short_side_batch

    checkpoint = os.path.join(directory, f"{model}.pth")
    save_torch_checkpoint(checkpoint, seeded_state(model))
    reference = os.path.join(directory, f"{model}.npz")
    subprocess.run([torch_python, os.path.abspath(__file__), "--torch-worker", model, checkpoint, reference,
                    str(runs)], check=True)
    theirs = dict(np.load(reference))
    start = time.perf_counter()
    detector = from_torchvision(model, weights=checkpoint, num_classes=91)
    convert_s = time.perf_counter() - start
    keras_path = os.path.join(directory, f"{model}.keras")
    detector.save(keras_path)
    photos = [theirs[f"photo/{name}"] for name in PHOTOS]
    level_error = 0.0
    for b, indices in enumerate(BATCHES):
        batch, _, _, _ = short_side_batch([photos[i] for i in indices], *detector.short_side_resize,
                                          pad_value=detector.pad_value)
        pyramid = detector.neck(detector.backbone(batch))
        for key in [k for k in theirs if k.startswith(f"{b}/P")]:
            expected = theirs[key]
            ours = keras.ops.convert_to_numpy(pyramid[key.split("/")[1]])
            assert ours.shape == expected.shape, (key, ours.shape, expected.shape)
            level_error = max(level_error, float(np.abs(ours - expected).max() / np.abs(expected).max()))
    ids = np.array(detector.category_ids)
    found_theirs, found_ours, counts = [], [], []
    for indices in BATCHES:
        results = detector.predict_images([photos[i] for i in indices], batch_size=len(indices))
        for i, result in zip(indices, results):
            ours = {"boxes": result["boxes"], "scores": result["scores"], "labels": ids[result["labels"]]}
            expected = {k: theirs[f"{PHOTOS[i]}/{k}"] for k in ("boxes", "scores", "labels")}
            found_theirs.append(_matched(ours, expected))
            found_ours.append(_matched(expected, ours))
            counts.append(len(expected["scores"]))
    first = [photos[i] for i in BATCHES[0]]
    predict_ms = _median_ms(lambda: detector.predict_images(first, batch_size=len(first)), runs)
    return {"model": model, "published_ap": MODELS[model][2], "fpn_max_relative_error": level_error,
            "torchvision_detections_matched": min(found_theirs), "our_detections_matched": min(found_ours),
            "detections_per_image": counts, "convert_s": round(convert_s, 2),
            "pth_mb": round(os.path.getsize(checkpoint) / 1e6, 1),
            "keras_mb": round(os.path.getsize(keras_path) / 1e6, 1),
            "ours_predict_ms": round(predict_ms), "torchvision_predict_ms": round(float(theirs["predict_ms"])),
            "torchvision": str(theirs["versions"]), "keras": keras.__version__}


DETECTRON2 = """## detectron2

`from_detectron2("COCO-Detection/faster_rcnn_R_50_FPN_1x" | "COCO-Detection/retinanet_R_50_FPN_1x",
checkpoint)` (published COCO AP 37.9 / 37.4; presets `detectron2/faster_rcnn_R_50_FPN_1x_coco`,
`detectron2/retinanet_R_50_FPN_1x_coco`) is compared with detectron2 itself, built from its public
source in the torch venv and run without its compiled `_C` (the R50-FPN models need only
torchvision's ops): `PYTHONPATH=<detectron2 source> /tmp/tvenv/bin/python bench/detectron2_reference.py`
writes tests/data/detectron2_reference.npz (seeded weights through a model-zoo style `.pkl`, which
detectron2 loads with its own DetectionCheckpointer; astronaut and coffee resized to 147x150 and
133x200, zero-padded to 160x160 and 160x224, the same tensor on both sides), and
`python -m pytest tests/test_detectron2.py -s` prints the differences: every FPN level within 2.5e-6
of its largest value, all 786 / 895 Faster R-CNN proposals, 399 / 399 detections matched. Not the
same: detectron2 rounds the resized size and resizes uint8 images with PIL; `predict_images` uses
torchvision's floor rule."""


def write_markdown(rows, path):
    lines = [
        "# Pretrained detectors: converted models against the originals",
        "",
        "Written by `python bench/convert_parity.py` (torchvision side in a separate venv: "
        "`--torch-python`). The COCO checkpoints cannot be downloaded on the machine that measured "
        "this, so both sides load the same seeded weights (the numpy seeds of "
        "bench/torchvision_*_reference.py, built to give hundreds of confident detections) at "
        "full size: torchvision's transform (short side 800, long side at most 1333, padding to 32), "
        "scikit-image's astronaut + coffee as one batch (800x800 and 800x1200 in a 800x1216 "
        "batch) and chelsea (800x1202) alone. CI checks the same path at a small scale without "
        "torch (tests/test_torchvision_photos.py).",
        "",
        "| model | published COCO AP | FPN max rel. diff | torchvision dets matched | ours matched | "
        "dets / image | convert s | .pth MB | .keras MB | predict ms ours / torchvision (2 images) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['published_ap']} | {r['fpn_max_relative_error']:.1e} | "
            f"{100 * r['torchvision_detections_matched']:.1f}% | {100 * r['our_detections_matched']:.1f}% | "
            f"{', '.join(str(c) for c in r['detections_per_image'])} | {r['convert_s']} | {r['pth_mb']} | "
            f"{r['keras_mb']} | {r['ours_predict_ms']} / {r['torchvision_predict_ms']} |")
    lines += ["", f"Versions: {rows[0]['torchvision']}, keras {rows[0]['keras']}. Machine: "
              f"{os.cpu_count()} CPU cores (this project's CPU kind); both sides with 2 threads.", "",
              DETECTRON2, ""]
    with open(path, "w") as handle:
        handle.write("\n".join(lines))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--torch-worker":
        model, checkpoint, out, runs = sys.argv[2:6]
        return torch_worker(model, checkpoint, out, int(runs))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", default=os.environ.get("TORCH_PYTHON", "/tmp/tvenv/bin/python"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "pretrained.md"))
    parser.add_argument("--json", default=os.path.join(ROOT, "docs", "convert_parity.jsonl"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for model in args.models.split(","):
            rows.append(compare(model, args.torch_python, args.runs, directory))
            print(json.dumps(rows[-1]), flush=True)
    with open(args.json, "a") as handle:
        for row in rows:
            handle.write(json.dumps({**row, "date": time.strftime("%Y-%m-%d")}) + "\n")
    write_markdown(rows, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
