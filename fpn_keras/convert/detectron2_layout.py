"""detectron2's COCO R50-FPN 1x models as data: their conventions, their state_dict layout,
seeded weights in that layout.

numpy only (no Keras, no torch), like `retinanet_layout` / `fasterrcnn_layout`: the converter
(`fpn_keras.convert.detectron2`), the tests and `bench/detectron2_reference.py` (run where
detectron2 and torch are installed, loading this file by path) read the same definitions.

Every value below was read from detectron2's source (config/defaults.py, configs/Base-*.yaml,
modeling/): ResNet with the stride in the first 1x1 conv (RESNETS.STRIDE_IN_1X1 True),
FrozenBN eps 1e-5, BGR input minus PIXEL_MEAN, PIXEL_STD 1; anchors at offset 0.0, sides not
rounded, size-major (DefaultAnchorGenerator); FPN top-down nearest 2x, RetinaNet P6 / P7 from
"res5" (LastLevelP6P7), Faster R-CNN P6 = max-pool k1 s2 of P5 (LastLevelMaxPool).
"""

import numpy as np

try:
    from .resnet_layout import random_resnet_state_dict
    from .retinanet_layout import fpn_state_dict_shapes, seeded_tensor
except ImportError:  # loaded by file path (bench/, where only torch is installed)
    from resnet_layout import random_resnet_state_dict
    from retinanet_layout import fpn_state_dict_shapes, seeded_tensor

CONFIGS = ("COCO-Detection/faster_rcnn_R_50_FPN_1x", "COCO-Detection/retinanet_R_50_FPN_1x")
PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)  # MODEL.PIXEL_MEAN, BGR, 0..255
PIXEL_STD = (1.0, 1.0, 1.0)
NORM_EPSILON = 1e-5  # detectron2.layers.FrozenBatchNorm2d
C2_C5_CHANNELS = (256, 512, 1024, 2048)
CHANNELS = 256  # MODEL.FPN.OUT_CHANNELS
# RetinaNet: ANCHOR_GENERATOR.SIZES = [[x, x * 2**(1/3), x * 2**(2/3)] for x in 32..512], not rounded.
RETINANET_ANCHOR_SIZES = tuple((x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)) for x in (32, 64, 128, 256, 512))
RETINANET_POSTPROCESS = {"score_threshold": 0.05, "nms_iou_threshold": 0.5, "max_detections": 100,
                         "pre_nms_topk": 1000}  # SCORE_THRESH_TEST, NMS_THRESH_TEST, TEST.DETECTIONS_PER_IMAGE, TOPK_CANDIDATES_TEST
NUM_ANCHORS_RETINANET = 9
# Faster R-CNN: RPN.PRE_NMS_TOPK_TEST (per level), POST_NMS_TOPK_TEST (per image), NMS_THRESH,
# PROPOSAL_GENERATOR.MIN_SIZE 0; ROI_HEADS.SCORE_THRESH_TEST, NMS_THRESH_TEST, 100 detections.
RPN_OPTIONS = {"pre_nms_topk_test": 1000, "post_nms_topk_test": 1000, "nms_threshold": 0.7, "min_size": 0.0}
ROI_POSTPROCESS = {"score_threshold": 0.05, "nms_iou_threshold": 0.5, "max_detections": 100}
POOLED_SIZE, FC_DIM, NUM_ANCHORS_RPN = 7, 1024, 3


def resnet_module(name):
    """A torchvision ResNet module path (our backbone's layer names) -> detectron2's
    (under backbone.bottom_up): conv1 / bn1 -> stem.conv1 / stem.conv1.norm,
    layer<l>.<i>.conv<j> / bn<j> -> res<l+1>.<i>.conv<j> / conv<j>.norm,
    layer<l>.<i>.downsample.0 / .1 -> res<l+1>.<i>.shortcut / shortcut.norm."""
    if name in ("conv1", "bn1"):
        return {"conv1": "stem.conv1", "bn1": "stem.conv1.norm"}[name]
    stage, index, rest = name.split(".", 2)
    prefix = f"res{int(stage[len('layer'):]) + 1}.{index}"
    if rest.startswith("bn"):
        return f"{prefix}.conv{rest[2:]}.norm"
    return {"downsample.0": f"{prefix}.shortcut", "downsample.1": f"{prefix}.shortcut.norm"}.get(rest, f"{prefix}.{rest}")


# The input is BGR minus the mean, std 1 (values ~ +-100, not ~ +-1 as torchvision's): the stem
# conv's seeded weights are divided by ImageNet's std in 0..255 units (0.226 * 255), as the
# MSRA (Caffe) stem's own weights are small, so the features have torchvision's scale.
STEM_GAIN = 1.0 / 57.6


def resnet_state_dict(seed=0):
    """resnet_layout's seeded R-50 weights under detectron2's names (backbone.bottom_up.*,
    FrozenBN weight / bias / running_mean / running_var, no classifier), the stem conv's
    times STEM_GAIN."""
    state = {}
    for key, value in random_resnet_state_dict(50, seed).items():
        module, field = key.rsplit(".", 1)
        if module.startswith("fc") or field == "num_batches_tracked":
            continue
        if key == "conv1.weight":
            value = (value * STEM_GAIN).astype(np.float32)
        state[f"backbone.bottom_up.{resnet_module(module)}.{field}"] = value
    return state


def _fpn_shapes(levels):
    """{key: shape} of backbone.fpn_lateral<l> / fpn_output<l> for `levels`."""
    shapes = {}
    for key, shape in fpn_state_dict_shapes(C2_C5_CHANNELS, CHANNELS).items():
        block, index, _, field = key.split(".")[2:]  # inner_blocks / layer_blocks, i, 0, field
        level = int(index) + 2
        if level in levels:
            kind = "lateral" if block == "inner_blocks" else "output"
            shapes[f"backbone.fpn_{kind}{level}.{field}"] = shape
    return shapes


def retinanet_shapes(num_classes=80):
    """{key: shape} of retinanet_R_50_FPN_1x outside backbone.bottom_up."""
    shapes = _fpn_shapes((3, 4, 5))
    shapes.update({"backbone.top_block.p6.weight": (CHANNELS, C2_C5_CHANNELS[-1], 3, 3),
                   "backbone.top_block.p6.bias": (CHANNELS,),
                   "backbone.top_block.p7.weight": (CHANNELS, CHANNELS, 3, 3),
                   "backbone.top_block.p7.bias": (CHANNELS,)})
    for subnet in ("cls_subnet", "bbox_subnet"):
        for i in (0, 2, 4, 6):  # Conv2d, ReLU, ... in an nn.Sequential
            shapes[f"head.{subnet}.{i}.weight"] = (CHANNELS, CHANNELS, 3, 3)
            shapes[f"head.{subnet}.{i}.bias"] = (CHANNELS,)
    for name, depth in (("cls_score", num_classes), ("bbox_pred", 4)):
        shapes[f"head.{name}.weight"] = (NUM_ANCHORS_RETINANET * depth, CHANNELS, 3, 3)
        shapes[f"head.{name}.bias"] = (NUM_ANCHORS_RETINANET * depth,)
    return shapes


def faster_rcnn_shapes(num_classes=80):
    """{key: shape} of faster_rcnn_R_50_FPN_1x outside backbone.bottom_up (cls_score: K + 1
    rows, background last; bbox_pred: 4K, class-specific)."""
    shapes = _fpn_shapes((2, 3, 4, 5))
    rpn = "proposal_generator.rpn_head"
    shapes.update({f"{rpn}.conv.weight": (CHANNELS, CHANNELS, 3, 3), f"{rpn}.conv.bias": (CHANNELS,),
                   f"{rpn}.objectness_logits.weight": (NUM_ANCHORS_RPN, CHANNELS, 1, 1),
                   f"{rpn}.objectness_logits.bias": (NUM_ANCHORS_RPN,),
                   f"{rpn}.anchor_deltas.weight": (NUM_ANCHORS_RPN * 4, CHANNELS, 1, 1),
                   f"{rpn}.anchor_deltas.bias": (NUM_ANCHORS_RPN * 4,)})
    for name, shape in (("box_head.fc1", (FC_DIM, CHANNELS * POOLED_SIZE ** 2)), ("box_head.fc2", (FC_DIM, FC_DIM)),
                        ("box_predictor.cls_score", (num_classes + 1, FC_DIM)),
                        ("box_predictor.bbox_pred", (num_classes * 4, FC_DIM))):
        shapes[f"roi_heads.{name}.weight"] = shape
        shapes[f"roi_heads.{name}.bias"] = shape[:1]
    return shapes


# Seeded weights that give confident detections (gain on N(0, 1 / fan_in) weights, bias mean,
# bias std) by module: RetinaNet logits around -4 (a few % of the scores pass 0.05), P6 / P7
# convs of gain 2.5 (their scores reach P3's); Faster R-CNN objectness of std ~1.5, RPN deltas
# of std ~0.2, class logits of std ~3 with rows centred and the background bias 1.0, deltas
# of std ~1 (x 1/10, 1/5 by the box coder): the values of retinanet_layout / fasterrcnn_layout.
SCALES = {"head.cls_score": (0.8, -4.0, 0.3), "head.bbox_pred": (0.5, 0.0, 0.1), "backbone.top_block": (2.5, 0.0, 0.1),
          "rpn_head.conv": (1.0, 0.0, 0.1), "rpn_head.objectness_logits": (0.6, -1.0, 0.3),
          "rpn_head.anchor_deltas": (0.04, 0.0, 0.05), "box_head.fc1": (1.4, 0.0, 0.1),
          "box_head.fc2": (1.4, 0.0, 0.1), "box_predictor.cls_score": (0.6, 0.0, 0.3),
          "box_predictor.bbox_pred": (0.17, 0.0, 0.3)}
BACKGROUND_BIAS = 1.0


def random_state_dict(config, seed=0, num_classes=80):
    """Deterministic float32 weights of a whole detectron2 model (`config` one of CONFIGS) in
    its layout: `resnet_state_dict(seed)` plus the FPN and heads (`seeded_tensor`, SCALES)."""
    if config not in CONFIGS:
        raise ValueError(f"unknown detectron2 config {config!r}; choose from {list(CONFIGS)}")
    state = resnet_state_dict(seed)
    shapes = retinanet_shapes(num_classes) if "retinanet" in config else faster_rcnn_shapes(num_classes)
    for key, shape in shapes.items():
        module = next((name for name in SCALES if f"{name}." in key), None)
        value = seeded_tensor(key, shape, seed, *SCALES.get(module, (1.0, 0.0, 0.1)))
        if key == "roi_heads.box_predictor.cls_score.weight":  # rows of mean 0: no class favoured
            value -= value.mean(axis=1, keepdims=True)
        if key == "roi_heads.box_predictor.cls_score.bias":
            value[-1] = BACKGROUND_BIAS  # detectron2's background is the last class
        state[key] = value.astype(np.float32)
    return state


def fc1_in_our_order(weight, channels=CHANNELS, size=POOLED_SIZE):
    """box_head.fc1.weight [out, C * S * S] reading (c, y, x) (torch's flatten of NCHW)
    -> [out, S * S * C] reading (y, x, c) (ours, channels last)."""
    weight = np.asarray(weight)
    return weight.reshape(-1, channels, size, size).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
