"""torchvision's retinanet_resnet50_fpn_v2 on seeded weights: the reference that
tests/test_torchvision_retinanet_v2.py checks the converted FPNDetector against (without torch).

Run where torch + torchvision are installed (Keras is not needed):

    python bench/torchvision_retinanet_v2_reference.py [--out tests/data/torchvision_retinanet_v2_reference.npz]

The model is `retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None)` (91 classes;
P6 / P7 from C5, GroupNorm(32) towers, torchvision's anchors and postprocess), its norms at
torchvision's eps 1e-5 (the v2 weights keep it), loaded strictly with
`retinanet_layout.random_retinanet_v2_state_dict` through torch.save. The weights are made
confident by scaling the class logits (OUTPUT_SCALES_V2: gain 1.6 on N(0, 1 / fan_in), bias
-4.5): logits of std ~1.2 on P3-P5, the best scores 0.8, the 300th ~0.27 (P6 / P7, whose
GroupNorm sees 6 and 2 locations, reach 0.3 and 0.08).
Canvases (CASES): 100x136 and 123x157 (not multiples of 32: odd C3..C5 / P6 / P7 sides, the
top-down crop, torchvision's image // grid anchor strides), fed as they are, and a 100x136
image padded bottom / right to 128x160 as GeneralizedRCNNTransform pads (zeros after
normalising; the test feeds the same canvas with the mean pixel, `resnet_layout.padded_canvas`).
The whole model(images) with a no-op resize and size_divisible 1 gives the same detections
(checked). Written per case: `feature_summary` of every FPN level P3..P7, `head_summary` and
anchor rows of each level (our anchor and class order), and every detection.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchvision_reference import IMAGE_SEED, ROOT, SEED, load_by_path  # noqa: E402
from torchvision_retinanet_reference import run, seeded_model, whole_model_detections  # noqa: E402

CASES = {"100x136": ((100, 136), (100, 136)), "123x157": ((123, 157), (123, 157)),
         "100x136_in_128x160": ((100, 136), (128, 160))}  # name: (image size, canvas)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "torchvision_retinanet_v2_reference.npz"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    layout, resnet = load_by_path("retinanet_layout"), load_by_path("resnet_layout")
    state = layout.random_retinanet_v2_state_dict(
        resnet.random_resnet_state_dict(50, SEED, prefix="backbone.body."), SEED)
    model, reference = seeded_model(torch, resnet, state, "retinanet_resnet50_fpn_v2", eps=None)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items() if not k.startswith("backbone.body.")}
    reference["state_dict_shapes"] = np.array(json.dumps(shapes))
    model.transform.size_divisible = 1  # whole_model_detections: the canvas as it is
    for name, (image_size, canvas) in CASES.items():
        images = resnet.padded_canvas(resnet.random_images(*image_size, IMAGE_SEED), *canvas)
        with torch.no_grad():
            features, head, anchors, detections = run(torch, model, images)
            whole = whole_model_detections(torch, model, images)
        for key in ("boxes", "scores", "labels"):
            error = (whole[key].double() - detections[key].double()).abs().max().item()
            assert whole[key].shape == detections[key].shape and error < 1e-2, f"{name}: model(images) differs in {key}"
            reference[f"{name}/whole_model_error/{key}"] = np.array(error)
        for level, cls, box, anchor, feature in zip(layout.LEVELS, head["cls_logits"], head["bbox_regression"],
                                                   anchors, features):
            for field, value in resnet.feature_summary(feature[0].permute(1, 2, 0).numpy()).items():
                reference[f"{name}/P{level}/feature_{field}"] = value
            cls = layout.outputs_in_our_order(cls[0].numpy(), 91, layout.COCO_80_IDS)
            box = layout.outputs_in_our_order(box[0].numpy(), 4)
            summary = layout.head_summary(cls, box)
            locations = cls.shape[0] // 9
            rows = [9 * i + a for i in (0, locations // 2, locations - 1) for a in range(9)]
            summary["anchor_rows"] = layout.outputs_in_our_order(anchor.numpy(), 4)[rows]
            summary["grid"] = np.array(feature.shape[-2:])
            for field, value in summary.items():
                reference[f"{name}/P{level}/{field}"] = value
            print(f"{name} P{level} grid {tuple(feature.shape[-2:])} feature std {feature.std():.3f} logits std "
                  f"{summary['stds'][0]:.3f} deltas std {summary['stds'][1]:.3f} max score "
                  f"{1 / (1 + np.exp(-cls.max())):.3f} above 0.05: {(cls > np.log(0.05 / 0.95)).sum()}")
        for key in ("boxes", "scores", "labels"):
            reference[f"{name}/detections/{key}"] = detections[key].numpy()
        scores = detections["scores"].numpy()
        print(f"{name}: {len(scores)} detections, scores {scores[0]:.4f}..{scores[-1]:.4f}, gaps < 1e-5: "
              f"{(-np.diff(scores) < 1e-5).sum()}, labels {np.unique(detections['labels'].numpy()).size}, "
              f"whole-model error {max(reference[f'{name}/whole_model_error/{k}'] for k in ('boxes', 'scores')):.1e}")
    np.savez_compressed(args.out, **reference)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
