"""torchvision's retinanet_resnet50_fpn as data: its conventions, its state_dict layout
outside the ResNet body, seeded weights in that layout, and its outputs in our order.

numpy only (no Keras, no torch, no package imports): the converter
(`fpn_keras.convert.torchvision_retinanet`), the tests and
`bench/torchvision_retinanet_reference.py` (run where only torch is installed,
loading this file by path) all read the same definitions.

Anchor order within a location: torchvision's is ratio-major (a = ratio * 3 + scale),
ours scale-major (a = scale * 3 + ratio). Classes: torchvision's 91 logits are COCO
category ids 0..90 (0 and 10 unused ids are "__background__" / "N/A"); an 80-class
head keeps the 80 real ids in increasing order (COCO_CLASS_NAMES' order).
"""

import zlib

import numpy as np

COCO_UNUSED_IDS = (0, 12, 26, 29, 30, 45, 66, 68, 69, 71, 83)  # torchvision's __background__ / N/A
COCO_80_IDS = tuple(i for i in range(91) if i not in COCO_UNUSED_IDS)
NUM_SCALES = NUM_RATIOS = 3
LEVELS = (3, 4, 5, 6, 7)
# torchvision's _default_anchorgen: (x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) per level.
ANCHOR_SIZES = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in (32, 64, 128, 256, 512))
# RetinaNet(...) defaults: score_thresh, nms_thresh, detections_per_img, topk_candidates.
POSTPROCESS = {"score_threshold": 0.05, "nms_iou_threshold": 0.5, "max_detections": 300,
               "pre_nms_topk": 1000}
WEIGHTS_URL = "https://download.pytorch.org/models/retinanet_resnet50_fpn_coco-eeacb38b.pth"
C3_C5_CHANNELS = (512, 1024, 2048)


def reorder_anchor_outputs(value, depth, keep=None, num_scales=NUM_SCALES):
    """cls_logits / bbox_reg weight [A*depth, ...] or bias [A*depth] from torchvision's
    (ratio, scale) anchor order to ours (scale, ratio); `keep`: indices along depth;
    num_scales: sizes per level (3 ratios each)."""
    value = np.asarray(value)
    blocks = value.reshape((NUM_RATIOS, num_scales, depth) + value.shape[1:])
    blocks = blocks.transpose((1, 0, 2) + tuple(range(3, blocks.ndim)))
    if keep is not None:
        blocks = blocks[:, :, list(keep)]
    return blocks.reshape((-1,) + value.shape[1:])


def outputs_in_our_order(value, depth, keep=None, num_scales=NUM_SCALES):
    """One level's torchvision head output [H*W*A, depth] (row-major locations, then
    anchors ratio-major) -> ours [H*W*A, len(keep) or depth] (anchors scale-major)."""
    value = np.asarray(value)
    per_location = value.reshape(-1, NUM_RATIOS * num_scales * depth).T  # [A*depth, H*W]
    reordered = reorder_anchor_outputs(per_location, depth, keep, num_scales).T  # [H*W, A*depth']
    return reordered.reshape(-1, len(keep) if keep is not None else depth)


def fpn_state_dict_shapes(in_channels, channels=256):
    """{key: shape} of torchvision's FeaturePyramidNetwork (backbone.fpn) without extra blocks:
    a 1x1 inner block and a 3x3 layer block per input level, `in_channels` finest first."""
    shapes = {}
    for i, inputs in enumerate(in_channels):
        shapes[f"backbone.fpn.inner_blocks.{i}.0.weight"] = (channels, inputs, 1, 1)
        shapes[f"backbone.fpn.inner_blocks.{i}.0.bias"] = (channels,)
    for i in range(len(in_channels)):
        shapes[f"backbone.fpn.layer_blocks.{i}.0.weight"] = (channels, channels, 3, 3)
        shapes[f"backbone.fpn.layer_blocks.{i}.0.bias"] = (channels,)
    return shapes


def seeded_tensor(key, shape, seed, gain=1.0, mean=0.0, std=0.1):
    """float64 values of one state_dict key, from its own generator (seed, crc32(key)) so that
    they do not depend on the order of the keys: a weight [out, ...] N(0, gain^2 / fan_in),
    a bias N(mean, std^2)."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    if key.endswith(".weight"):
        return rng.standard_normal(shape) * gain / np.sqrt(np.prod(shape[1:]))
    return mean + rng.standard_normal(shape) * std


def retinanet_state_dict_shapes(num_classes=91):
    """{key: shape} of retinanet_resnet50_fpn(num_classes).state_dict() outside backbone.body."""
    shapes = fpn_state_dict_shapes(C3_C5_CHANNELS)
    for name in ("p6", "p7"):
        shapes[f"backbone.fpn.extra_blocks.{name}.weight"] = (256, 256, 3, 3)
        shapes[f"backbone.fpn.extra_blocks.{name}.bias"] = (256,)
    anchors = NUM_SCALES * NUM_RATIOS
    for tower, output, depth in (("classification_head", "cls_logits", num_classes),
                                 ("regression_head", "bbox_reg", 4)):
        for i in range(4):
            shapes[f"head.{tower}.conv.{i}.0.weight"] = (256, 256, 3, 3)
            shapes[f"head.{tower}.conv.{i}.0.bias"] = (256,)
        shapes[f"head.{tower}.{output}.weight"] = (anchors * depth, 256, 3, 3)
        shapes[f"head.{tower}.{output}.bias"] = (anchors * depth,)
    return shapes


# (gain on N(0, 1 / fan_in) weights, bias mean, bias std) of the head's two outputs: logits
# around -4 (a few % of the scores pass torchvision's 0.05, so the threshold counts on P6 /
# P7 and the 1000 candidates on P3 - P5) and deltas of std ~0.3 (boxes near their anchors).
OUTPUT_SCALES = {"cls_logits": (0.8, -4.0, 0.3), "bbox_reg": (0.5, 0.0, 0.1)}
EXTRA_LEVELS_GAIN = 2.5  # P6 / P7 convs: their scores reach P3's, so detections come from all levels
UNUSED_CLASS_BIAS = -10.0  # the 11 unused ids never fire, as in the COCO checkpoint


def random_retinanet_state_dict(resnet_state, seed=0, num_classes=91):
    """Deterministic float32 weights of the whole detector in torchvision's layout:
    `resnet_state` (resnet_layout.random_resnet_state_dict(50, prefix="backbone.body."),
    its fc dropped) plus the FPN and head, N(0, 1 / fan_in) weights and N(0, 0.1) biases,
    the head's outputs as OUTPUT_SCALES, the unused ids' logit biases UNUSED_CLASS_BIAS
    (so 80- and 91-class conversions give the same detections); see `seeded_tensor`."""
    state = {k: v for k, v in resnet_state.items() if not k.startswith("backbone.body.fc.")}
    for key, shape in retinanet_state_dict_shapes(num_classes).items():
        output = next((name for name in OUTPUT_SCALES if f".{name}." in key), None)
        gain, mean, std = OUTPUT_SCALES.get(output, (1.0, 0.0, 0.1))
        if ".extra_blocks." in key:
            gain = EXTRA_LEVELS_GAIN
        value = seeded_tensor(key, shape, seed, gain, mean, std)
        if key.endswith(".bias") and output == "cls_logits" and num_classes == 91:
            value.reshape(-1, 91)[:, list(COCO_UNUSED_IDS)] = UNUSED_CLASS_BIAS
        state[key] = value.astype(np.float32)
    return state


def head_summary(cls_logits, box_deltas):
    """Small fingerprint of one level's outputs in our order, cls_logits [N, K] and
    box_deltas [N, 4] (one image): per anchor the class sum and a weighted delta sum
    (catches permuted classes / coordinates), all outputs of the first, middle and last
    locations' anchors, and the std of each."""
    cls_logits, box_deltas = np.asarray(cls_logits, np.float64), np.asarray(box_deltas, np.float64)
    anchors = NUM_SCALES * NUM_RATIOS
    locations = cls_logits.shape[0] // anchors
    rows = np.concatenate([np.arange(anchors) + anchors * i for i in (0, locations // 2, locations - 1)])
    return {"cls_sum": cls_logits.sum(-1).astype(np.float32),
            "box_sum": (box_deltas @ np.array([1.0, 2.0, 3.0, 4.0])).astype(np.float32),
            "cls_rows": cls_logits[rows].astype(np.float32), "box_rows": box_deltas[rows].astype(np.float32),
            "stds": np.array([cls_logits.std(), box_deltas.std()], np.float32)}


# ---- retinanet_resnet50_fpn_v2 (ATSS paper's improvements): P6 / P7 from C5
# (LastLevelP6P7(2048, 256)), GroupNorm(32, eps 1e-5) after each tower conv (which then has
# no bias), GIoU box loss; backbone BatchNorm2d eps 1e-5 (no overwrite_eps).
WEIGHTS_URL_V2 = "https://download.pytorch.org/models/retinanet_resnet50_fpn_v2_coco-5905b1c5.pth"
NORM_EPSILON_V2 = 1e-5


def seeded_norm_tensor(key, shape, seed):
    """float64 values of one norm-layer key (GroupNorm / BatchNorm2d), from its own generator:
    weight U(0.5, 1.5), bias and running_mean N(0, 0.1), running_var U(0.5, 2);
    num_batches_tracked an int64 1000."""
    if key.endswith("num_batches_tracked"):
        return np.array(1000, np.int64)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    if key.endswith(".weight"):
        return rng.uniform(0.5, 1.5, shape)
    if key.endswith("running_var"):
        return rng.uniform(0.5, 2.0, shape)
    return rng.standard_normal(shape) * 0.1


def retinanet_v2_state_dict_shapes(num_classes=91):
    """{key: shape} of retinanet_resnet50_fpn_v2(num_classes).state_dict() outside backbone.body."""
    shapes = {}
    for key, shape in retinanet_state_dict_shapes(num_classes).items():
        if ".conv." in key and key.endswith(".0.bias"):  # Conv2dNormActivation: no bias with a norm
            continue
        shapes[key] = shape
        if ".conv." in key and key.endswith(".0.weight"):
            for field in ("weight", "bias"):
                shapes[key.replace(".0.weight", f".1.{field}")] = (shape[0],)
    shapes["backbone.fpn.extra_blocks.p6.weight"] = (256, C3_C5_CHANNELS[-1], 3, 3)
    return shapes


# (gain, bias mean, bias std) of the v2 head's outputs, read after GroupNorm + ReLU towers
# (activations ~0.6 rms): logits around -4.5 of std ~1.2 on P3-P5, so the best anchors reach
# ~0.8 and ~8 % of the (anchor, class) pairs pass 0.05 on P3; deltas std ~0.2.
OUTPUT_SCALES_V2 = {"cls_logits": (1.6, -4.5, 0.3), "bbox_reg": (0.3, 0.0, 0.1)}
EXTRA_LEVELS_GAIN_V2 = 1.0


def random_retinanet_v2_state_dict(resnet_state, seed=0, num_classes=91):
    """Deterministic weights of retinanet_resnet50_fpn_v2 in torchvision's layout, as
    `random_retinanet_state_dict` with OUTPUT_SCALES_V2 / EXTRA_LEVELS_GAIN_V2 and the
    GroupNorms from `seeded_norm_tensor`."""
    state = {k: v for k, v in resnet_state.items() if not k.startswith("backbone.body.fc.")}
    for key, shape in retinanet_v2_state_dict_shapes(num_classes).items():
        if ".conv." in key and key.rsplit(".", 2)[1] == "1":  # conv.<i>.1: the GroupNorm
            state[key] = seeded_norm_tensor(key, shape, seed).astype(np.float32)
            continue
        output = next((name for name in OUTPUT_SCALES_V2 if f".{name}." in key), None)
        gain, mean, std = OUTPUT_SCALES_V2.get(output, (1.0, 0.0, 0.1))
        if ".extra_blocks." in key:
            gain = EXTRA_LEVELS_GAIN_V2
        value = seeded_tensor(key, shape, seed, gain, mean, std)
        if key.endswith(".bias") and output == "cls_logits" and num_classes == 91:
            value.reshape(-1, 91)[:, list(COCO_UNUSED_IDS)] = UNUSED_CLASS_BIAS
        state[key] = value.astype(np.float32)
    return state
