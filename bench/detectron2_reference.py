"""detectron2 itself on seeded weights: the reference that tests/test_detectron2.py checks
`convert.from_detectron2` against (without torch).

Run where torch, torchvision, detectron2 (its source folder on PYTHONPATH is enough: the R50-FPN
models use only torchvision ops on CPU, no compiled `detectron2._C`) and scikit-image are
installed (Keras is not needed):

    PYTHONPATH=/path/to/detectron2 python bench/detectron2_reference.py \
        [--configs /path/to/detectron2/configs] [--out tests/data/detectron2_reference.npz]

For each of COCO-Detection/faster_rcnn_R_50_FPN_1x and retinanet_R_50_FPN_1x: the model is
`build_model(cfg)` of detectron2's own config file (MODEL.DEVICE cpu), eval mode, its weights
`detectron2_layout.random_state_dict(config, SEED)` written as a model-zoo style .pkl
({"model": {name: array}, "__author__": ...}) and loaded by detectron2's DetectionCheckpointer
(every tensor then checked equal to the seeded one). The seeded weights give confident
detections: the stem conv divided by 57.6 (the input is BGR minus the mean, std 1: ~ +-100,
`detectron2_layout.STEM_GAIN`); RetinaNet class-logit biases ~ N(-4, 0.3) and weights of gain
0.8, P6 / P7 convs of gain 2.5 (99-100 detections of 10-14 classes, scores 0.20-0.34); Faster
R-CNN objectness of std ~1.5, class-logit rows centred (std ~3) with the background bias 1.0
(100 detections of 2-3 classes, scores 0.51-0.90; `detectron2_layout.SCALES`).

Images: scikit-image's astronaut and coffee photographs resized (PIL bilinear) to 147 x 150 and
133 x 200 (not multiples of 32), padded with zeros bottom / right to 160 x 160 and 160 x 224:
that padded RGB uint8 canvas is what both sides get (detectron2: BGR, CHW, float; its own
padding to 32 then adds nothing, and its image size is the canvas). Written per model and image:
the canvas, every FPN level (shape, the channel vector of every pixel for levels of <= 600
pixels and of 600 seeded pixels otherwise, the channel sum at every pixel), Faster R-CNN's
proposals, the adaptive RoIAlign's largest samples-per-bin over the proposals, and
`model([{"image": ...}])`'s detections (after detector_postprocess at scale 1).
"""

import argparse
import json
import os
import pickle
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchvision_reference import ROOT, load_by_path  # noqa: E402

SEED = 14
IMAGES = {"astronaut": (147, 150, 160, 160), "coffee": (133, 200, 160, 224)}  # resize h, w; canvas H, W
MAX_PIXELS = 600
KEPT_PIXELS = 200


def canvas(name, size):
    """skimage.data.<name>() resized to size[:2] (bilinear), zero-padded to size[2:]: [H, W, 3] uint8."""
    import skimage.data
    from PIL import Image

    height, width, canvas_h, canvas_w = size
    image = Image.fromarray(getattr(skimage.data, name)()).resize((width, height), Image.BILINEAR)
    padded = np.zeros((canvas_h, canvas_w, 3), np.uint8)
    padded[:height, :width] = np.asarray(image)
    return padded


def pixel_rows(height, width, level):
    """Flat pixel indices of a level that the reference keeps: all, or MAX_PIXELS seeded ones,
    then every k-th so that at most KEPT_PIXELS remain (the fixture stays under 2 MB)."""
    if height * width <= MAX_PIXELS:
        rows = np.arange(height * width)
    else:
        rows = np.sort(np.random.default_rng([SEED, level]).choice(height * width, MAX_PIXELS, replace=False))
    return rows[::-(-len(rows) // KEPT_PIXELS)]


def build(config, configs_dir, state):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(configs_dir, f"{config}.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.pkl")
        with open(path, "wb") as handle:
            pickle.dump({"model": state, "__author__": "fpn_keras bench/detectron2_reference.py"}, handle)
        DetectionCheckpointer(model).load(path)
    loaded = {k: v.numpy() for k, v in model.state_dict().items()}
    assert sorted(loaded) == sorted(state), sorted(set(loaded) ^ set(state))
    for key, value in state.items():
        assert np.array_equal(loaded[key], value), key
    return cfg, model


def adaptive_grid(proposals):
    """The largest ceil(side / stride / 7) over the proposals (aligned RoIAlign, P2-P5 by
    detectron2's assign_boxes_to_levels): the samples per bin the reference needed."""
    w, h = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    levels = np.clip(np.floor(4 + np.log2(np.sqrt(w * h) / 224 + 1e-8)), 2, 5)
    return int(np.ceil(np.maximum(w, h) / 2.0 ** levels / 7).max())


def run(torch, model, image, faster_rcnn):
    x = torch.from_numpy(np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1))).float()  # BGR, CHW
    inputs = [{"image": x}]
    out = {}
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        assert tuple(images.tensor.shape[-2:]) == image.shape[:2], "the canvas must be a multiple of 32"
        features = model.backbone(images.tensor)
        out["features"] = {name: f[0].permute(1, 2, 0).numpy() for name, f in features.items()}  # p2.. -> HWC
        if faster_rcnn:
            proposals, _ = model.proposal_generator(images, features)
            out["proposals"] = proposals[0].proposal_boxes.tensor.numpy()
            out["objectness"] = proposals[0].objectness_logits.numpy()
        instances = model(inputs)[0]["instances"]
    out["boxes"] = instances.pred_boxes.tensor.numpy()
    out["scores"] = instances.scores.numpy()
    out["labels"] = instances.pred_classes.numpy()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=None, help="detectron2's configs folder (default: beside the package)")
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "detectron2_reference.npz"))
    args = parser.parse_args()
    import detectron2
    import torch

    torch.set_num_threads(1)
    configs_dir = args.configs or os.path.join(os.path.dirname(os.path.dirname(detectron2.__file__)), "configs")
    layout = load_by_path("detectron2_layout")
    resnet = load_by_path("resnet_layout")
    reference = {"images": np.array(json.dumps(IMAGES))}
    for name, size in IMAGES.items():
        reference[f"{name}/canvas"] = canvas(name, size)
    for config in layout.CONFIGS:
        short = config.split("/")[1]
        faster_rcnn = "faster_rcnn" in config
        state = layout.random_state_dict(config, SEED)
        reference[f"{short}/weights_sha256"] = np.array(resnet.state_dict_sha256(state))
        _, model = build(config, configs_dir, state)
        for name in IMAGES:
            out = run(torch, model, reference[f"{name}/canvas"], faster_rcnn)
            prefix = f"{short}/{name}"
            for level, feature in out["features"].items():
                h, w, c = feature.shape
                rows = pixel_rows(h, w, int(level[1:]))
                reference[f"{prefix}/{level}/shape"] = np.array(feature.shape)
                reference[f"{prefix}/{level}/rows"] = rows
                reference[f"{prefix}/{level}/pixels"] = feature.reshape(-1, c)[rows]
                reference[f"{prefix}/{level}/channel_sum"] = feature.sum(-1, dtype=np.float64).astype(np.float32)
            if faster_rcnn:
                reference[f"{prefix}/proposals"] = out["proposals"]
                reference[f"{prefix}/objectness"] = out["objectness"]
                reference[f"{prefix}/adaptive_grid"] = np.array(adaptive_grid(out["proposals"]))
            for key in ("boxes", "scores", "labels"):
                reference[f"{prefix}/detections/{key}"] = out[key]
            scores = out["scores"]
            gaps = (-np.diff(np.sort(scores)[::-1]) < 1e-5).sum()
            extra = (f", {len(out['proposals'])} proposals, adaptive grid <= {reference[f'{prefix}/adaptive_grid']}"
                     if faster_rcnn else "")
            print(f"{short} {name}: levels {[tuple(f.shape) for f in out['features'].values()]}{extra}; "
                  f"{len(scores)} detections, scores {scores.max():.3f}..{scores.min():.3f} "
                  f"({(scores > 0.5).sum()} > 0.5), {np.unique(out['labels']).size} labels, score gaps < 1e-5: {gaps}")
    np.savez_compressed(args.out, **reference)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
