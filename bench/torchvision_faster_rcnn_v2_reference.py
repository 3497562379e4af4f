"""torchvision's fasterrcnn_resnet50_fpn_v2 on seeded weights: the reference that
tests/test_torchvision_faster_rcnn_v2.py checks the converted FPNDetector against (without torch).

Run where torch + torchvision are installed (Keras is not needed):

    python bench/torchvision_faster_rcnn_v2_reference.py [--out tests/data/torchvision_faster_rcnn_v2_reference.npz]

The model is `fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)` (91 outputs;
FPN convs + BatchNorm2d, a 2-conv RPN head, the 4conv1fc box head with BatchNorm2d,
torchvision's anchors, RPN and postprocess), every norm at torchvision's eps 1e-5, loaded
strictly with `fasterrcnn_layout.random_fasterrcnn_v2_state_dict` through torch.save. The
weights are made confident as v1's (`fasterrcnn_layout.OUTPUT_SCALES`: class logits of std ~3
from centred cls_score rows, background bias 1.0, N/A ids -10), the box head's convs at gain
1.4 and its fc at 2.5, each channel's 7 x 7 fc weights centred (OUTPUT_SCALES_V2): 100
detections of ~14 classes, scores ~0.97 down to ~0.3.
Canvases: as bench/torchvision_retinanet_v2_reference.py's CASES (100x136, 123x157, and a 100x136
image padded to 128x160). The whole model(images) with a no-op resize and size_divisible 1
gives the same detections (checked). Written per case: `feature_summary` of every FPN level
P2..P6, `rpn_summary` and anchor rows of each level, every proposal, `roi_summary` of the RoI
heads on those proposals (our order, 80 classes), and every detection.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchvision_faster_rcnn_reference import rows_of, run  # noqa: E402
from torchvision_reference import IMAGE_SEED, ROOT, SEED, load_by_path  # noqa: E402
from torchvision_retinanet_reference import normalised, seeded_model, whole_model_detections  # noqa: E402
from torchvision_retinanet_v2_reference import CASES  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "data",
                                                      "torchvision_faster_rcnn_v2_reference.npz"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    resnet, layout = load_by_path("resnet_layout"), load_by_path("fasterrcnn_layout")
    state = layout.random_fasterrcnn_v2_state_dict(
        resnet.random_resnet_state_dict(50, SEED, prefix="backbone.body."), SEED)
    model, reference = seeded_model(torch, resnet, state, "fasterrcnn_resnet50_fpn_v2", eps=None)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items() if not k.startswith("backbone.body.")}
    reference["state_dict_shapes"] = np.array(json.dumps(shapes))
    model.transform.size_divisible = 1  # whole_model_detections: the canvas as it is
    ids = layout.class_ids(80)
    for name, (image_size, canvas) in CASES.items():
        images = resnet.padded_canvas(resnet.random_images(*image_size, IMAGE_SEED), *canvas)
        with torch.no_grad():
            out = run(torch, model, images)
            features = list(model.backbone(normalised(torch, images)).values())
            whole = whole_model_detections(torch, model, images)
        detections = out["detections"]
        for key in ("boxes", "scores", "labels"):
            error = (whole[key].double() - detections[key].double()).abs().max().item()
            assert whole[key].shape == detections[key].shape and error < 2e-2, f"{name}: model(images) differs in {key}"
            reference[f"{name}/whole_model_error/{key}"] = np.array(error)
        for level, feature, grid, objectness, deltas, anchors in zip(
                range(2, 7), features, out["grids"], out["objectness"], out["deltas"], out["anchors"]):
            summary = layout.rpn_summary(objectness.numpy(), deltas.numpy())
            summary["anchor_rows"] = anchors.numpy()[rows_of(len(anchors))]
            summary["grid"] = np.array(grid)
            summary.update({f"feature_{k}": v for k, v in resnet.feature_summary(
                feature[0].permute(1, 2, 0).numpy()).items()})
            for field, value in summary.items():
                reference[f"{name}/P{level}/{field}"] = value
            print(f"{name} P{level} grid {grid} feature std {feature.std():.3f} objectness std "
                  f"{summary['stds'][0]:.3f} deltas std {summary['stds'][1]:.3f}")
        proposals, scores = out["proposals"].numpy(), out["scores"].numpy()
        reference[f"{name}/proposals/boxes"], reference[f"{name}/proposals/scores"] = proposals, scores
        cls, box = layout.roi_outputs_in_our_order(out["class_logits"].numpy(), out["box_regression"].numpy(), ids)
        for field, value in layout.roi_summary(cls, box, rows=(0, len(cls) // 2, len(cls) - 1)).items():
            reference[f"{name}/roi/{field}"] = value
        for key in ("boxes", "scores", "labels"):
            reference[f"{name}/detections/{key}"] = detections[key].numpy()
        probs = torch.softmax(out["class_logits"], -1)[:, 1:].numpy()
        det_scores = detections["scores"].numpy()
        print(f"{name}: {len(proposals)} proposals (gaps < 1e-5: {(-np.diff(scores) < 1e-5).sum()}); RoI logits "
              f"std {cls.std():.3f}, deltas std {box.std():.3f}, (proposal, class) pairs > 0.05: "
              f"{(probs > 0.05).sum()}; {len(det_scores)} detections, scores {det_scores[:1]}..{det_scores[-1:]}, "
              f"gaps < 1e-5: {(-np.diff(det_scores) < 1e-5).sum()}, {np.unique(detections['labels'].numpy()).size} "
              f"labels, whole-model error {reference[f'{name}/whole_model_error/boxes']:.1e} px")
    np.savez_compressed(args.out, **reference)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
