"""torchvision's fasterrcnn_mobilenet_v3_large_fpn on seeded weights: the reference that
tests/test_torchvision_mobilenet.py checks the converted FPNDetector against (without torch).

Run where torch + torchvision are installed (Keras is not needed):

    python bench/torchvision_mobilenet_reference.py [--out tests/data/torchvision_mobilenet_reference.npz]

The model is `fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None)` (91
outputs; BatchNorm2d eps 1e-5 in eval mode, which is FrozenBatchNorm2d's map; rpn_score_thresh
0.05 as the builder sets it), loaded strictly with
`mobilenet_v3_layout.random_fasterrcnn_mobilenet_state_dict(SEED)` through torch.save.
For each image size (not multiples of 32), `random_images(h, w, IMAGE_SEED)` is normalised and
zero-padded bottom/right to a multiple of 32, as GeneralizedRCNNTransform does (no resize):
the same tensor our detector gets from the canvas whose padding is the ImageNet mean pixel.
On it: backbone.body ("0": features.13, "1": features.16), backbone.fpn ("0", "1", "pool"),
the RPN (head, anchors, filter_proposals), the RoI heads' outputs on those proposals
(`fasterrcnn_layout.roi_summary`, our class order) and roi_heads, with image_sizes = the padded canvas
(what FPNDetector.detect clips to). The same steps with image_sizes = (h, w) are checked against
model(images) (a no-op resize), so they are GeneralizedRCNN.forward's. Written: the whole
backbone and FPN maps (NHWC), proposals (boxes, scores) and detections per size; backbone maps
of an odd-sized unpadded image (the symmetric stride-2 padding on odd sides); state_dict shapes.
"""

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchvision_reference import IMAGE_SEED, ROOT, SEED, load_by_path  # noqa: E402
from torchvision_retinanet_reference import normalised  # noqa: E402

SIZES = ((150, 200), (200, 130))  # canvases 160 x 224, 224 x 160
ODD_SIZE = (97, 131)  # backbone only, unpadded


def seeded_model(torch, resnet, state):
    import tempfile

    import torchvision

    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "fasterrcnn_mobilenet.pth")
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
        model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    header = {"seed": np.array(SEED), "image_seed": np.array(IMAGE_SEED),
              "weights_sha256": np.array(resnet.state_dict_sha256(state)),
              "versions": np.array(f"torch {torch.__version__}, torchvision {torchvision.__version__}")}
    return model.eval(), header


def padded_tensor(torch, images):
    """images [1, h, w, 3] 0..255 -> normalised, zero-padded to multiples of 32, NCHW."""
    x = normalised(torch, images)
    height, width = (32 * math.ceil(s / 32) for s in x.shape[-2:])
    padded = torch.zeros((1, 3, height, width))
    padded[:, :, : x.shape[-2], : x.shape[-1]] = x
    return padded


def run(torch, model, x, size):
    """x [1, 3, H, W] -> body maps, FPN maps, proposals + scores, detections (image_sizes [size])."""
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    body = model.backbone.body(x)
    pyramid = model.backbone.fpn(body)
    levels = list(pyramid.values())
    rpn = model.rpn
    objectness, deltas = rpn.head(levels)
    anchors = rpn.anchor_generator(ImageList(x, [size]), levels)
    per_level = [o[0].numel() for o in objectness]
    flat_objectness, flat_deltas = concat_box_prediction_layers(objectness, deltas)
    decoded = rpn.box_coder.decode(flat_deltas, anchors).view(1, -1, 4)
    proposals, scores = rpn.filter_proposals(decoded, flat_objectness, [size], per_level)
    heads = model.roi_heads
    class_logits, box_regression = heads.box_predictor(heads.box_head(heads.box_roi_pool(pyramid, proposals, [size])))
    detections, _ = heads(pyramid, proposals, [size])
    # How many of each level's top-1000 candidates the 0.05 objectness threshold removes.
    below = [(torch.sigmoid(o.flatten()).topk(min(1000, o.numel())).values < 0.05).sum().item() for o in objectness]
    return {"body": body, "pyramid": pyramid, "proposals": proposals[0], "scores": scores[0],
            "class_logits": class_logits, "box_regression": box_regression,
            "detections": detections[0], "below_threshold": below}


def nhwc(tensor):
    return tensor.permute(0, 2, 3, 1).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "torchvision_mobilenet_reference.npz"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    resnet = load_by_path("resnet_layout")
    heads = load_by_path("fasterrcnn_layout")
    layout = load_by_path("mobilenet_v3_layout")
    state = layout.random_fasterrcnn_mobilenet_state_dict(SEED)
    model, reference = seeded_model(torch, resnet, state)
    reference["state_dict_shapes"] = np.array(json.dumps({k: list(v.shape) for k, v in model.state_dict().items()}))
    for height, width in SIZES:
        images = resnet.random_images(height, width, IMAGE_SEED)
        name = f"{height}x{width}"
        x = padded_tensor(torch, images)
        with torch.no_grad():
            out = run(torch, model, x, tuple(x.shape[-2:]))
            own = run(torch, model, x, (height, width))["detections"]
            model.transform.min_size, model.transform.max_size = (min(height, width),), max(height, width)
            whole = model([torch.from_numpy(images[0]).permute(2, 0, 1) / 255.0])[0]
        for key in ("boxes", "scores", "labels"):
            # its bilinear resize by 1.0 is not exactly the identity
            error = (whole[key].double() - own[key].double()).abs().max().item()
            assert whole[key].shape == own[key].shape and error < 2e-2, f"{name}: model(images) differs in {key}"
            reference[f"{name}/whole_model_error/{key}"] = np.array(error)
        reference[f"{name}/canvas"] = np.array(x.shape[-2:])
        for key, level in (("0", "C4"), ("1", "C5")):
            reference[f"{name}/backbone/{level}"] = nhwc(out["body"][key])
        for key, level in (("0", "P4"), ("1", "P5"), ("pool", "P6")):
            reference[f"{name}/fpn/{level}"] = nhwc(out["pyramid"][key])
        reference[f"{name}/proposals/boxes"] = out["proposals"].numpy()
        reference[f"{name}/proposals/scores"] = out["scores"].numpy()
        cls, box = heads.roi_outputs_in_our_order(out["class_logits"].numpy(), out["box_regression"].numpy(),
                                                  heads.class_ids(80))
        count = len(cls)
        for field, value in heads.roi_summary(cls, box, rows=(0, count // 2, count - 1)).items():
            reference[f"{name}/roi/{field}"] = value
        detections = out["detections"]
        for key in ("boxes", "scores", "labels"):
            reference[f"{name}/detections/{key}"] = detections[key].numpy()
        scores = detections["scores"].numpy()
        print(f"{name} (canvas {tuple(x.shape[-2:])}): maps " + ", ".join(
            f"{group}{k} {tuple(v.shape[-2:])} std {v.std():.2f}" for group in ("body", "pyramid")
            for k, v in out[group].items())
            + f"; candidates below 0.05 per level {out['below_threshold']}; {len(out['scores'])} proposals; "
            f"{len(scores)} detections, scores {scores.max():.3f}..{scores.min():.3f} (> 0.5: {(scores > 0.5).sum()}, "
            f"gaps < 1e-4: {(-np.diff(scores) < 1e-4).sum()}), {np.unique(detections['labels'].numpy()).size} labels")
    images = resnet.random_images(*ODD_SIZE, IMAGE_SEED)
    with torch.no_grad():
        body = model.backbone.body(normalised(torch, images))
    for key, level in (("0", "C4"), ("1", "C5")):
        reference[f"odd/backbone/{level}"] = nhwc(body[key])
    np.savez_compressed(args.out, **reference)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
