"""torchvision's fasterrcnn_resnet50_fpn on seeded weights: the reference that
tests/test_torchvision_faster_rcnn.py checks the converted FPNDetector against (without torch).

Run where torch + torchvision are installed (Keras is not needed):

    python bench/torchvision_faster_rcnn_reference.py [--out tests/data/torchvision_faster_rcnn_reference.npz]

The model is `fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)` (91 outputs,
torchvision's anchors, RPN (1000 per level, NMS 0.7, 1000 proposals) and postprocess (score
0.05, boxes >= 1e-2, NMS 0.5, 100 detections)) with every BatchNorm's eps 0.0 (as
overwrite_eps does for COCO_V1), loaded strictly with
`fasterrcnn_layout.random_fasterrcnn_state_dict` through torch.save. For each canvas,
`random_images(H, W, IMAGE_SEED)` is normalised as GeneralizedRCNNTransform does and fed as it
is (no resize, no padding): backbone -> rpn (head, anchors, filter_proposals) -> roi_heads, as
GeneralizedRCNN.forward does in eval mode; model(images) with a no-op resize is checked too.
Written per canvas: `fasterrcnn_layout.rpn_summary` and anchor rows of each level, every
proposal (boxes, objectness probabilities), `roi_summary` of the RoI heads on those proposals
(in our order, 80 classes), and every detection. Also the state_dict keys and shapes outside
backbone.body.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchvision_reference import IMAGE_SEED, ROOT, SEED, load_by_path  # noqa: E402
from torchvision_retinanet_reference import normalised, seeded_model, whole_model_detections  # noqa: E402

SIZES = ((128, 128), (160, 224))


def run(torch, model, images):
    """images [1, H, W, 3] 0..255 -> RPN outputs / anchors per level, proposals and their
    scores, RoI-head outputs on them, detections."""
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    x = normalised(torch, images)
    sizes = [tuple(x.shape[-2:])]
    features = model.backbone(x)
    levels = list(features.values())
    rpn = model.rpn
    objectness, deltas = rpn.head(levels)
    anchors = rpn.anchor_generator(ImageList(x, sizes), levels)
    per_level = [o[0].numel() for o in objectness]
    flat_objectness, flat_deltas = concat_box_prediction_layers(objectness, deltas)
    decoded = rpn.box_coder.decode(flat_deltas, anchors).view(1, -1, 4)
    proposals, scores = rpn.filter_proposals(decoded, flat_objectness, sizes, per_level)
    heads = model.roi_heads
    pooled = heads.box_roi_pool(features, proposals, sizes)
    class_logits, box_regression = heads.box_predictor(heads.box_head(pooled))
    detections, _ = heads(features, proposals, sizes)
    return {"grids": [tuple(f.shape[-2:]) for f in levels],
            "objectness": flat_objectness[:, 0].split(per_level), "deltas": flat_deltas.split(per_level),
            "anchors": anchors[0].split(per_level), "proposals": proposals[0], "scores": scores[0],
            "class_logits": class_logits, "box_regression": box_regression, "detections": detections[0]}


def rows_of(count, per_location=3):
    """Anchor rows of the first, middle and last locations of a level."""
    locations = count // per_location
    return [per_location * i + a for i in (0, locations // 2, locations - 1) for a in range(per_location)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "torchvision_faster_rcnn_reference.npz"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    resnet = load_by_path("resnet_layout")
    layout = load_by_path("fasterrcnn_layout")
    state = layout.random_fasterrcnn_state_dict(resnet.random_resnet_state_dict(50, SEED, prefix="backbone.body."), SEED)
    model, reference = seeded_model(torch, resnet, state, "fasterrcnn_resnet50_fpn")
    shapes = {k: list(v.shape) for k, v in model.state_dict().items() if not k.startswith("backbone.body.")}
    reference["state_dict_shapes"] = np.array(json.dumps(shapes))
    ids = layout.class_ids(80)
    for height, width in SIZES:
        images = resnet.random_images(height, width, IMAGE_SEED)
        name = f"{height}x{width}"
        with torch.no_grad():
            out = run(torch, model, images)
            whole = whole_model_detections(torch, model, images)
        detections = out["detections"]
        for key in ("boxes", "scores", "labels"):
            error = (whole[key].double() - detections[key].double()).abs().max().item()
            # its bilinear resize by 1.0 is not exactly the identity: 4e-3 px on these weights
            assert whole[key].shape == detections[key].shape and error < 2e-2, f"{name}: model(images) differs in {key}"
            reference[f"{name}/whole_model_error/{key}"] = np.array(error)
        for level, grid, objectness, deltas, anchors in zip(range(2, 7), out["grids"], out["objectness"],
                                                             out["deltas"], out["anchors"]):
            summary = layout.rpn_summary(objectness.numpy(), deltas.numpy())
            summary["anchor_rows"] = anchors.numpy()[rows_of(len(anchors))]
            summary["grid"] = np.array(grid)
            for field, value in summary.items():
                reference[f"{name}/P{level}/{field}"] = value
            print(f"{name} P{level} grid {grid} objectness std {summary['stds'][0]:.3f} "
                  f"deltas std {summary['stds'][1]:.3f}")
        proposals, scores = out["proposals"].numpy(), out["scores"].numpy()
        reference[f"{name}/proposals/boxes"], reference[f"{name}/proposals/scores"] = proposals, scores
        cls, box = layout.roi_outputs_in_our_order(out["class_logits"].numpy(), out["box_regression"].numpy(), ids)
        for field, value in layout.roi_summary(cls, box, rows=(0, len(cls) // 2, len(cls) - 1)).items():
            reference[f"{name}/roi/{field}"] = value
        for key in ("boxes", "scores", "labels"):
            reference[f"{name}/detections/{key}"] = detections[key].numpy()
        probs = torch.softmax(out["class_logits"], -1)[:, 1:].numpy()
        det_scores = detections["scores"].numpy()
        print(f"{name}: {len(proposals)} proposals (scores {scores[0]:.4f}..{scores[-1]:.4f}, gaps < 1e-5: "
              f"{(-np.diff(scores) < 1e-5).sum()}); RoI logits std {cls.std():.3f}, deltas std {box.std():.3f}, "
              f"(proposal, class) pairs > 0.05: {(probs > 0.05).sum()}; {len(det_scores)} detections, scores "
              f"{det_scores[:1]}..{det_scores[-1:]}, gaps < 1e-5: {(-np.diff(det_scores) < 1e-5).sum()}, "
              f"{np.unique(detections['labels'].numpy()).size} labels")
    np.savez_compressed(args.out, **reference)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
