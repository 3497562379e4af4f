"""torchvision's fasterrcnn_resnet50_fpn as data: its conventions, its state_dict layout
outside the ResNet body, seeded weights in that layout, and its outputs in our order.

numpy only (no Keras, no torch), like `retinanet_layout` (which it reads): the converter
(`fpn_keras.convert.torchvision_faster_rcnn`), the tests and
`bench/torchvision_faster_rcnn_reference.py` (where only torch is installed) share it.

Box predictor rows: torchvision's 91 outputs are background (index 0) then COCO ids 1..90
(10 of them "N/A"); ours are K classes then background LAST, with K x 4 class-specific
deltas (background's 4 dropped). `class_ids(num_classes)` says which ids we keep: the 80
real ones (num_classes=80) or all 90 (num_classes=91, the softmax then equals torchvision's).
fc6 reads a flattened RoI: torchvision's [C, 7, 7] (channel-major), ours [7, 7, C].
"""

import numpy as np

try:
    from .retinanet_layout import (COCO_80_IDS, COCO_UNUSED_IDS, fpn_state_dict_shapes, seeded_norm_tensor,
                                   seeded_tensor)
except ImportError:  # loaded by file path (bench/, where only torch is installed)
    from retinanet_layout import (COCO_80_IDS, COCO_UNUSED_IDS, fpn_state_dict_shapes, seeded_norm_tensor,
                                  seeded_tensor)

WEIGHTS_URL = "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
C2_C5_CHANNELS = (256, 512, 1024, 2048)
NUM_ANCHORS = 3  # one size per level (32 .. 512 on P2 .. P6) x ratios (0.5, 1, 2)
POOLED_SIZE, FC_DIM, CHANNELS = 7, 1024, 256
# torchvision's FasterRCNN(...) defaults at test time, in our modules' argument names.
RPN_OPTIONS = {"pre_nms_topk_test": 1000, "post_nms_topk_test": 1000, "nms_threshold": 0.7,
               "min_size": 1e-3}
POSTPROCESS = {"score_threshold": 0.05, "nms_iou_threshold": 0.5, "max_detections": 100,
               "min_box_size": 1e-2}


def class_ids(num_classes):
    """The COCO ids (torchvision's predictor rows) of our K classes, in order."""
    if num_classes == 80:
        return tuple(COCO_80_IDS)
    if num_classes == 91:
        return tuple(range(1, 91))
    raise ValueError(f"num_classes must be 80 (COCO's classes) or 91 (torchvision's 91 outputs: "
                     f"ids 1..90 as 90 classes), received {num_classes}")


def predictor_in_our_order(value, depth, ids):
    """cls_score (depth 1) / bbox_pred (depth 4) weight [91*depth, ...] or bias [91*depth]
    -> ours: cls_score rows `ids` then background (row 0); bbox_pred the rows of `ids`."""
    value = np.asarray(value)
    blocks = value.reshape((-1, depth) + value.shape[1:])
    rows = list(ids) + [0] if depth == 1 else list(ids)
    return blocks[rows].reshape((-1,) + value.shape[1:])


def roi_outputs_in_our_order(cls_logits, box_deltas, ids):
    """torchvision's RoI-head outputs class_logits [P, 91], box_regression [P, 364]
    -> ours (cls_logits [P, K + 1] background last, box_deltas [P, K, 4])."""
    cls = predictor_in_our_order(np.asarray(cls_logits).T, 1, ids).T
    box = predictor_in_our_order(np.asarray(box_deltas).T, 4, ids).T
    return cls, box.reshape(box.shape[0], -1, 4)


def fc6_in_our_order(weight, channels=CHANNELS, size=POOLED_SIZE):
    """fc6.weight [out, C * S * S] reading (c, y, x) -> [out, S * S * C] reading (y, x, c)."""
    weight = np.asarray(weight)
    return weight.reshape(-1, channels, size, size).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)


def fasterrcnn_state_dict_shapes(num_classes=91, in_channels=C2_C5_CHANNELS, num_anchors=NUM_ANCHORS):
    """{key: shape} of fasterrcnn_resnet50_fpn(num_classes).state_dict() outside backbone.body
    (another backbone: its FPN inputs `in_channels`, finest first, and RPN `num_anchors`)."""
    shapes = fpn_state_dict_shapes(in_channels, CHANNELS)
    shapes["rpn.head.conv.0.0.weight"] = (CHANNELS, CHANNELS, 3, 3)
    shapes["rpn.head.conv.0.0.bias"] = (CHANNELS,)
    for name, depth in (("cls_logits", 1), ("bbox_pred", 4)):
        shapes[f"rpn.head.{name}.weight"] = (num_anchors * depth, CHANNELS, 1, 1)
        shapes[f"rpn.head.{name}.bias"] = (num_anchors * depth,)
    inputs = CHANNELS * POOLED_SIZE ** 2
    for name, shape in (("box_head.fc6", (FC_DIM, inputs)), ("box_head.fc7", (FC_DIM, FC_DIM)),
                        ("box_predictor.cls_score", (num_classes, FC_DIM)),
                        ("box_predictor.bbox_pred", (num_classes * 4, FC_DIM))):
        shapes[f"roi_heads.{name}.weight"] = shape
        shapes[f"roi_heads.{name}.bias"] = shape[:1]
    return shapes


# (gain on N(0, 1 / fan_in) weights, bias mean, bias std) by module: objectness of std ~1.5
# (sigmoid far from saturation, so no float32 ties), RPN deltas of std ~0.2 (proposals near
# their anchors; 660 / 987 proposals at 128x128 / 160x224, under the 1000 cut), class logits
# of std ~3 (rows centred, so RoI-dependent: ~5 classes per RoI pass 0.05, 100 detections of
# 10-13 classes), deltas of std ~1 (x 1/10, 1/5 by the box coder).
OUTPUT_SCALES = {"rpn.head.conv": (1.0, 0.0, 0.1), "rpn.head.cls_logits": (0.6, -1.0, 0.3),
                 "rpn.head.bbox_pred": (0.04, 0.0, 0.05), "box_head.fc6": (1.4, 0.0, 0.1),
                 "box_head.fc7": (1.4, 0.0, 0.1), "box_predictor.cls_score": (0.6, 0.0, 0.3),
                 "box_predictor.bbox_pred": (0.17, 0.0, 0.3)}
BACKGROUND_BIAS = 1.0
UNUSED_CLASS_BIAS = -10.0  # the N/A ids never fire: 80- and 91-class conversions agree


def random_fasterrcnn_state_dict(resnet_state, seed=0, num_classes=91, scales=None, **shape_args):
    """Deterministic float32 weights of the whole detector in torchvision's layout:
    `resnet_state` (resnet_layout.random_resnet_state_dict(50, prefix="backbone.body."),
    its fc dropped) plus the FPN, RPN and RoI heads (`seeded_tensor`, gains OUTPUT_SCALES
    or `scales`), cls_score's rows centred, its background bias BACKGROUND_BIAS and N/A biases
    UNUSED_CLASS_BIAS. shape_args: `fasterrcnn_state_dict_shapes`' in_channels / num_anchors
    (another backbone's body in `resnet_state`)."""
    scales = {**OUTPUT_SCALES, **(scales or {})}
    state = {k: v for k, v in resnet_state.items() if not k.startswith("backbone.body.fc.")}
    for key, shape in fasterrcnn_state_dict_shapes(num_classes, **shape_args).items():
        module = next((name for name in scales if f"{name}." in key), None)
        value = seeded_tensor(key, shape, seed, *scales.get(module, (1.0, 0.0, 0.1)))
        if key == "roi_heads.box_predictor.cls_score.weight":  # rows of mean 0: fc7's common
            value -= value.mean(axis=1, keepdims=True)  # (ReLU) part favours no class
        if key == "roi_heads.box_predictor.cls_score.bias" and num_classes == 91:
            value[0] = BACKGROUND_BIAS
            value[[i for i in COCO_UNUSED_IDS if i]] = UNUSED_CLASS_BIAS
        state[key] = value.astype(np.float32)
    return state


def rpn_summary(objectness, deltas):
    """One level's RPN outputs (one image): objectness [N] and deltas [N, 4] weighted
    1, 2, 3, 4 per anchor (catches permuted coordinates), and their stds."""
    objectness, deltas = np.asarray(objectness, np.float64), np.asarray(deltas, np.float64)
    return {"objectness": objectness.astype(np.float32),
            "box_sum": (deltas @ np.array([1.0, 2.0, 3.0, 4.0])).astype(np.float32),
            "stds": np.array([objectness.std(), deltas.std()], np.float32)}


def roi_summary(cls_logits, box_deltas, rows=(0, 1, 2)):
    """RoI-head outputs in our order (cls_logits [P, K + 1], box_deltas [P, K, 4]): per RoI a
    class-weighted logit sum and a class- and coordinate-weighted delta sum (weights 1 + k % 7,
    1..4: catch permuted classes), every output of `rows`, and the stds."""
    cls, box = np.asarray(cls_logits, np.float64), np.asarray(box_deltas, np.float64)
    class_weights = 1.0 + np.arange(cls.shape[1]) % 7
    return {"cls_sum": (cls @ class_weights).astype(np.float32),
            "box_sum": np.einsum("pkc,k,c->p", box, class_weights[:-1], [1.0, 2.0, 3.0, 4.0]).astype(np.float32),
            "cls_rows": cls[list(rows)].astype(np.float32), "box_rows": box[list(rows)].astype(np.float32),
            "stds": np.array([cls.std(), box.std()], np.float32)}


# ---- fasterrcnn_resnet50_fpn_v2 (Li et al., 2021, "Benchmarking detection transfer learning
# with vision transformers"): FPN convs without bias, each followed by BatchNorm2d; RPN head
# with two 3x3 convs; box head FastRCNNConvFCHead: 4 x (3x3 conv 256, no bias, BatchNorm2d,
# ReLU), flatten (c, y, x), one fc 1024 (box_head.5); every BatchNorm eps 1e-5.
WEIGHTS_URL_V2 = "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth"
NORM_EPSILON_V2 = 1e-5
RPN_CONV_DEPTH_V2, NUM_CONV_V2 = 2, 4
BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
V2_FC = "roi_heads.box_head.5"  # after 4 Conv2dNormActivation blocks and a Flatten


def _conv_bn_shapes(prefix, out_channels, in_channels, kernel):
    shapes = {f"{prefix}.0.weight": (out_channels, in_channels, kernel, kernel)}
    shapes.update({f"{prefix}.1.{field}": (out_channels,) if field != "num_batches_tracked" else ()
                   for field in BN_FIELDS})
    return shapes


def fasterrcnn_v2_state_dict_shapes(num_classes=91):
    """{key: shape} of fasterrcnn_resnet50_fpn_v2(num_classes).state_dict() outside backbone.body."""
    shapes = {}
    for i, channels in enumerate(C2_C5_CHANNELS):
        shapes.update(_conv_bn_shapes(f"backbone.fpn.inner_blocks.{i}", CHANNELS, channels, 1))
    for i in range(len(C2_C5_CHANNELS)):
        shapes.update(_conv_bn_shapes(f"backbone.fpn.layer_blocks.{i}", CHANNELS, CHANNELS, 3))
    for i in range(RPN_CONV_DEPTH_V2):
        shapes[f"rpn.head.conv.{i}.0.weight"] = (CHANNELS, CHANNELS, 3, 3)
        shapes[f"rpn.head.conv.{i}.0.bias"] = (CHANNELS,)
    v1 = fasterrcnn_state_dict_shapes(num_classes)
    shapes.update({k: v for k, v in v1.items() if k.startswith(("rpn.head.cls_logits", "rpn.head.bbox_pred"))})
    for i in range(NUM_CONV_V2):
        shapes.update(_conv_bn_shapes(f"roi_heads.box_head.{i}", CHANNELS, CHANNELS, 3))
    shapes[f"{V2_FC}.weight"], shapes[f"{V2_FC}.bias"] = (FC_DIM, CHANNELS * POOLED_SIZE ** 2), (FC_DIM,)
    shapes.update({k: v for k, v in v1.items() if k.startswith("roi_heads.box_predictor.")})
    return shapes


# As OUTPUT_SCALES, for the v2 modules: the RPN's second conv, the box head's convs
# (BatchNorm after each keeps them O(1)) and its single fc, gain 2.5 and each channel's 7 x 7
# weights centred (the conv tower's per-channel offsets, common to every RoI, would otherwise
# make one class win everywhere): ~14 classes among the 100 detections, scores 0.97..0.33.
OUTPUT_SCALES_V2 = {**OUTPUT_SCALES, "rpn.head.conv": (1.0, 0.0, 0.1), "roi_heads.box_head.": (1.4, 0.0, 0.1),
                    V2_FC: (2.5, 0.0, 0.1)}


def random_fasterrcnn_v2_state_dict(resnet_state, seed=0, num_classes=91, scales=None):
    """Deterministic float32 weights of fasterrcnn_resnet50_fpn_v2 in torchvision's layout,
    as `random_fasterrcnn_state_dict` (gains OUTPUT_SCALES_V2 or `scales`, the longest
    matching module prefix wins; box_head.5's weights centred per channel), the BatchNorms
    from `seeded_norm_tensor`."""
    scales = {**OUTPUT_SCALES_V2, **(scales or {})}
    state = {k: v for k, v in resnet_state.items() if not k.startswith("backbone.body.fc.")}
    for key, shape in fasterrcnn_v2_state_dict_shapes(num_classes).items():
        if key.rsplit(".", 2)[1] == "1" and not key.startswith("rpn."):  # a Conv2dNormActivation's BatchNorm2d
            value = seeded_norm_tensor(key, shape, seed)
            state[key] = value if value.dtype == np.int64 else value.astype(np.float32)
            continue
        module = max((name for name in scales if key.startswith(name) or f"{name}." in key), key=len, default=None)
        value = seeded_tensor(key, shape, seed, *scales.get(module, (1.0, 0.0, 0.1)))
        if key == "roi_heads.box_predictor.cls_score.weight":
            value -= value.mean(axis=1, keepdims=True)
        if key == f"{V2_FC}.weight":  # each channel's 7 x 7 weights of mean 0: a map
            blocks = value.reshape(shape[0], CHANNELS, -1)  # constant over the RoI adds nothing
            value = (blocks - blocks.mean(axis=2, keepdims=True)).reshape(shape)
        if key == "roi_heads.box_predictor.cls_score.bias" and num_classes == 91:
            value[0] = BACKGROUND_BIAS
            value[[i for i in COCO_UNUSED_IDS if i]] = UNUSED_CLASS_BIAS
        state[key] = value.astype(np.float32)
    return state
