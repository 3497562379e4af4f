"""torchvision's retinanet_resnet50_fpn on seeded weights: the reference that
tests/test_torchvision_retinanet.py checks the converted FPNDetector against (without torch).

Run where torch + torchvision are installed (Keras is not needed):

    python bench/torchvision_retinanet_reference.py [--out tests/data/torchvision_retinanet_reference.npz]

The model is `retinanet_resnet50_fpn(weights=None, weights_backbone=None)` (91 classes,
torchvision's default anchors and postprocess: score 0.05, 1000 candidates per level,
NMS 0.5, 300 detections) with every BatchNorm's eps set to 0.0 (what overwrite_eps does
for the COCO_V1 weights), loaded strictly with `retinanet_layout.random_retinanet_state_dict`
(written with torch.save, so the test reads the same file format as a real checkpoint).
For each canvas, `random_images(H, W, IMAGE_SEED)` is normalised as GeneralizedRCNNTransform
does ((x / 255 - mean) / std) and fed as it is, bypassing the transform's resize and
padding: backbone -> head -> anchor_generator(ImageList) -> postprocess_detections, as
RetinaNet.forward does in eval mode. The whole model(images), with the transform's
min_size / max_size set to the canvas's sides (a resize by 1.0), gives the same labels and
boxes within 4e-4 px (its bilinear resize by 1.0 is not exactly the identity): checked too.
128x128 has even P5 / P6 sides (the stride-2 padding) and 160x224 a canvas that 2**7 does
not divide (P6 3x4, P7 2x2: anchor strides 53x56 and 80x112, torchvision's image // grid).
Written per canvas: `retinanet_layout.head_summary` of each level (in our anchor and class
order), torchvision's anchors at the same rows, and every detection.
"""

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchvision_reference import IMAGE_SEED, ROOT, SEED, load_by_path  # noqa: E402

SIZES = ((128, 128), (160, 224))


def seeded_model(torch, resnet, state, builder="retinanet_resnet50_fpn", eps=0.0):
    """(torchvision.models.detection.<builder>(weights=None, weights_backbone=None), every
    BatchNorm eps `eps` (None: torchvision's own), loaded strictly with `state` through
    torch.save; the reference's header)."""
    import torchvision

    model = getattr(torchvision.models.detection, builder)(weights=None, weights_backbone=None)
    for module in model.modules():
        if eps is not None and isinstance(module, (torch.nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d)):
            module.eps = eps
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, f"{builder}.pth")
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
        model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    header = {"seed": np.array(SEED), "image_seed": np.array(IMAGE_SEED),
              "weights_sha256": np.array(resnet.state_dict_sha256(state)),
              "versions": np.array(f"torch {torch.__version__}, torchvision {torchvision.__version__}")}
    return model.eval(), header


def normalised(torch, images):
    """images [1, H, W, 3] 0..255 -> GeneralizedRCNNTransform's (x / 255 - mean) / std, NCHW."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0
    return (x - torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)


def run(torch, model, images):
    """images [1, H, W, 3] 0..255 -> (features, head outputs, anchors, detections)."""
    from torchvision.models.detection.image_list import ImageList

    x = normalised(torch, images)
    size = tuple(x.shape[-2:])
    features = list(model.backbone(x).values())
    head = model.head(features)
    anchors = model.anchor_generator(ImageList(x, [size]), features)
    per_level = [f.shape[-2] * f.shape[-1] * 9 for f in features]
    split = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
    detections = model.postprocess_detections(split, [list(a.split(per_level)) for a in anchors], [size])
    return features, split, list(anchors[0].split(per_level)), detections[0]


def whole_model_detections(torch, model, images):
    """model(images) with the transform's resize a no-op (min_size / max_size = the sides)."""
    height, width = images.shape[1:3]
    model.transform.min_size, model.transform.max_size = (min(height, width),), max(height, width)
    return model([torch.from_numpy(images[0]).permute(2, 0, 1) / 255.0])[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "torchvision_retinanet_reference.npz"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    layout, resnet = load_by_path("retinanet_layout"), load_by_path("resnet_layout")
    state = layout.random_retinanet_state_dict(
        resnet.random_resnet_state_dict(50, SEED, prefix="backbone.body."), SEED)
    model, reference = seeded_model(torch, resnet, state)
    for height, width in SIZES:
        images = resnet.random_images(height, width, IMAGE_SEED)
        name = f"{height}x{width}"
        with torch.no_grad():
            features, head, anchors, detections = run(torch, model, images)
            whole = whole_model_detections(torch, model, images)
        for key in ("boxes", "scores", "labels"):
            error = (whole[key].double() - detections[key].double()).abs().max().item()
            assert error < 1e-3, f"{name}: model(images) differs from the direct path in {key} by {error}"
            reference[f"{name}/whole_model_error/{key}"] = np.array(error)
        for level, cls, box, anchor, feature in zip(layout.LEVELS, head["cls_logits"], head["bbox_regression"],
                                                   anchors, features):
            cls = layout.outputs_in_our_order(cls[0].numpy(), 91, layout.COCO_80_IDS)
            box = layout.outputs_in_our_order(box[0].numpy(), 4)
            summary = layout.head_summary(cls, box)
            locations = cls.shape[0] // 9
            rows = [9 * i + a for i in (0, locations // 2, locations - 1) for a in range(9)]
            summary["anchor_rows"] = layout.outputs_in_our_order(anchor.numpy(), 4)[rows]
            summary["grid"] = np.array(feature.shape[-2:])
            for field, value in summary.items():
                reference[f"{name}/P{level}/{field}"] = value
            print(f"{name} P{level} grid {tuple(feature.shape[-2:])} logits std {summary['stds'][0]:.3f} "
                  f"deltas std {summary['stds'][1]:.3f} max score {1 / (1 + np.exp(-cls.max())):.3f} "
                  f"above 0.05: {(cls > np.log(0.05 / 0.95)).sum()}")
        for key in ("boxes", "scores", "labels"):
            reference[f"{name}/detections/{key}"] = detections[key].numpy()
        scores = detections["scores"].numpy()
        gaps = -np.diff(scores[:100])
        print(f"{name}: {len(scores)} detections, scores {scores[0]:.4f}..{scores[-1]:.4f}, "
              f"top-100 gaps < 1e-5: {(gaps < 1e-5).sum()}, labels {np.unique(detections['labels'].numpy()).size}")
    np.savez_compressed(args.out, **reference)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
