"""One-off check of convert/torchvision_retinanet.py against torchvision (two runs):

    python bench/torchvision_retinanet_check.py torch DIR   # where torch + torchvision are
    python bench/torchvision_retinanet_check.py keras DIR   # where fpn_keras is

`torch`: torchvision's RetinaNet (resnet50 body with FrozenBatchNorm2d, FPN from
C3..C5, LastLevelP6P7(256, 256), 91 classes) with seeded weights (the body from
resnet_layout.random_resnet_state_dict, the FPN / head N(0, 1 / fan_in)), saved
with torch.save to DIR/retinanet.pth; its raw head outputs (per level, after
the transform's normalisation, no resize) for each size go to DIR/outputs.npz.
`keras`: reads the .pth without torch, converts into an 80-class FPNDetector and
prints the max error of the class logits and box deltas per level, relative to
the std of torchvision's, after reordering torchvision's outputs to ours.
160x160 has odd P5 (5) and P6 (3), where "same" and torch's padding agree;
128x128 has even P5 / P6 and shows the P6 / P7 padding difference.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchvision_reference import IMAGE_SEED, SEED, load_by_path  # noqa: E402

SIZES = ((160, 160), (128, 128))


def run_torch(directory):
    import torch
    import torchvision
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.set_num_threads(1)
    layout = load_by_path("resnet_layout")
    body = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    body.load_state_dict({k: torch.from_numpy(v) for k, v in layout.random_resnet_state_dict(50, SEED).items()})
    backbone = _resnet_fpn_extractor(body, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    model = RetinaNet(backbone, num_classes=91).eval()
    rng = np.random.default_rng(SEED + 1)
    state = model.state_dict()
    for key, value in state.items():
        if not key.startswith("backbone.body."):
            fan_in = np.prod(value.shape[1:]) if value.ndim > 1 else 256
            value.copy_(torch.from_numpy(rng.standard_normal(tuple(value.shape)).astype(np.float32)
                                         / np.sqrt(fan_in)))
    torch.save(state, os.path.join(directory, "retinanet.pth"))
    outputs = {}
    for height, width in SIZES:
        images = layout.random_images(height, width, IMAGE_SEED)
        x = torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0
        x = (x - torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
        with torch.no_grad():
            features = list(model.backbone(x).values())
            head = model.head(features)
        for name, value in (("cls_logits", head["cls_logits"]), ("box_deltas", head["bbox_regression"])):
            outputs[f"{height}x{width}/{name}"] = value.numpy()
        outputs[f"{height}x{width}/sizes"] = np.array([f.shape[-2:] for f in features])
    np.savez(os.path.join(directory, "outputs.npz"), **outputs)


def to_our_order(value, sizes, depth, keep):
    """torchvision [HWA_t total, depth_t] -> per level [H*W*A, depth] in our anchor order."""
    levels, start = {}, 0
    for level, (h, w) in zip(range(3, 8), sizes):
        block = value[start:start + h * w * 9].reshape(h, w, 3, 3, -1).transpose(0, 1, 3, 2, 4)
        levels[f"P{level}"] = (block[..., list(keep)] if keep else block).reshape(h * w * 9, depth)
        start += h * w * 9
    return levels


def run_keras(directory):
    from fpn_keras.convert import read_torch_checkpoint
    from fpn_keras.convert.resnet_layout import random_images
    from fpn_keras.convert.torchvision_retinanet import COCO_80_IDS, load_torchvision_retinanet
    from fpn_keras.layers.fpn import FeaturePyramid
    from fpn_keras.models.detector import FPNDetector
    from fpn_keras.models.retinanet import RetinaNet
    from fpn_keras.models.torchvision_resnet import torchvision_resnet

    detector = FPNDetector(backbone=torchvision_resnet(50), head=RetinaNet(num_classes=80, name="head"),
                           neck=FeaturePyramid(3, 7, 256, extra_levels_source="P5"))
    detector(np.zeros((1, 160, 160, 3), np.float32))  # builds
    load_torchvision_retinanet(detector, read_torch_checkpoint(os.path.join(directory, "retinanet.pth")))
    reference = np.load(os.path.join(directory, "outputs.npz"))
    for height, width in SIZES:
        raw = detector(random_images(height, width, IMAGE_SEED))
        sizes = reference[f"{height}x{width}/sizes"]
        for name, depth, keep in (("cls_logits", 80, COCO_80_IDS), ("box_deltas", 4, None)):
            ours = to_our_order(reference[f"{height}x{width}/{name}"][0], sizes, depth, keep)
            for level, expected in ours.items():
                got = np.asarray(raw[name][level][0])
                error = np.abs(got - expected).max() / expected.std()
                print(f"{height}x{width} {name} {level} {tuple(got.shape)} max error / std {error:.1e}")


if __name__ == "__main__":
    {"torch": run_torch, "keras": run_keras}[sys.argv[1]](sys.argv[2])
