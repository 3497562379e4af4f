"""torchvision's MobileNetV3-Large layout as data (`features.0` .. `features.16`), the feature
maps its detection models take, and seeded numpy weights in that layout.

numpy only (no Keras, no torch), like `resnet_layout` (it reads `fasterrcnn_layout`): the Keras builder
(`fpn_keras.models.torchvision_mobilenet_v3`), the converter, the tests and
`bench/torchvision_mobilenet_reference.py` (where only torch is installed) read the same table.

torchvision's modules (models/mobilenetv3.py, Table 1 of the MobileNetV3 paper):
  features.0        Conv2dNormActivation 3x3 stride 2, 3 -> 16, hardswish ("0.0" conv, "0.1" norm);
  features.1 .. 15  InvertedResidual: "block.0" 1x1 expand (absent when expanded == in),
                    depthwise k x k (stride on it), optional SqueezeExcitation ("fc1", "fc2":
                    1x1 convs with bias; squeeze channels make_divisible(expanded // 4, 8);
                    ReLU then hardsigmoid), 1x1 project (no activation); residual when
                    stride 1 and in == out;
  features.16       Conv2dNormActivation 1x1, 160 -> 960, hardswish.
Convs have no bias and pad (k - 1) // 2 on every side; the detection models build it
without dilation (dilated=False) and with norm_layer FrozenBatchNorm2d (eps 1e-5; no
overwrite_eps for fasterrcnn_mobilenet_v3_large_fpn) when trained, BatchNorm2d (eps 1e-5) when not.
"""

import numpy as np

try:
    from .fasterrcnn_layout import random_fasterrcnn_state_dict
except ImportError:  # loaded by file path (bench/, where only torch is installed)
    from fasterrcnn_layout import random_fasterrcnn_state_dict

# (kernel, expanded, out, use_se, activation, stride) of features.1 .. features.15.
LARGE_BLOCKS = (
    (3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1))
STEM_CHANNELS = 16
LAST_CHANNELS = 960  # features.16: 6 x 160
NUM_FEATURES = len(LARGE_BLOCKS) + 2  # features.0 .. features.16
# _mobilenet_extractor: stage starts = features.0, every stride-2 block (its `_is_cn`), the last
# module; with FPN it returns the last two stages' modules: features.13 (stride 32, 160
# channels) and features.16 (stride 32, 960 channels): both at stride 32.
STAGE_INDICES = (0, 2, 4, 7, 13, 16)
FPN_FEATURES = {"C4": 13, "C5": 16}
# The last module at each stride 4..32 (C2..C5 for a standard FPN neck).
STRIDE_FEATURES = {"C2": 3, "C3": 6, "C4": 12, "C5": 16}
FEATURE_MAPS = {"fpn": FPN_FEATURES, "strides": STRIDE_FEATURES}


def make_divisible(value, divisor=8):
    """torchvision's _make_divisible: the nearest multiple of `divisor` (>= divisor), raised by
    one divisor when that is more than 10 % below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def features_layout():
    """[(index, units, residual)] for features.0 .. features.16. A unit is ("conv", path, in,
    out, kernel, stride, groups, activation: "RE" ReLU / "HS" hardswish / None) or ("se", path,
    channels, squeeze channels); paths are torchvision's, relative to `features`."""
    layout = [(0, [("conv", "0", 3, STEM_CHANNELS, 3, 2, 1, "HS")], False)]
    channels = STEM_CHANNELS
    for index, (kernel, expanded, out, use_se, activation, stride) in enumerate(LARGE_BLOCKS, start=1):
        units, j = [], 0
        if expanded != channels:
            units.append(("conv", f"{index}.block.{j}", channels, expanded, 1, 1, 1, activation))
            j += 1
        units.append(("conv", f"{index}.block.{j}", expanded, expanded, kernel, stride, expanded, activation))
        j += 1
        if use_se:
            units.append(("se", f"{index}.block.{j}", expanded, make_divisible(expanded // 4)))
            j += 1
        units.append(("conv", f"{index}.block.{j}", expanded, out, 1, 1, 1, None))
        layout.append((index, units, stride == 1 and channels == out))
        channels = out
    layout.append((NUM_FEATURES - 1, [("conv", f"{NUM_FEATURES - 1}", channels, LAST_CHANNELS, 1, 1, 1, "HS")],
                   False))
    return layout


def feature_channels(index):
    """Output channels of features.<index>."""
    _, units, _ = features_layout()[index]
    return units[-1][3]


def features_state_dict_shapes(prefix=""):
    """{prefix + key: shape} of mobilenet_v3_large().features.state_dict() (conv "<path>.0.weight"
    OIHW, norm "<path>.1.*", SE "<path>.fc1/fc2.weight/bias")."""
    shapes = {}
    for _, units, _ in features_layout():
        for unit in units:
            if unit[0] == "se":
                _, path, channels, squeeze = unit
                shapes.update({f"{path}.fc1.weight": (squeeze, channels, 1, 1), f"{path}.fc1.bias": (squeeze,),
                               f"{path}.fc2.weight": (channels, squeeze, 1, 1), f"{path}.fc2.bias": (channels,)})
                continue
            _, path, cin, cout, kernel, _, groups, _ = unit
            shapes[f"{path}.0.weight"] = (cout, cin // groups, kernel, kernel)
            for field in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{path}.1.{field}"] = (cout,)
            shapes[f"{path}.1.num_batches_tracked"] = ()
    return {prefix + key: shape for key, shape in shapes.items()}


def random_features_state_dict(seed=0, prefix="backbone.body."):
    """Deterministic float32 weights {prefix + key: array} of features.0 .. 16.

    He-normal convs (fan_in = in / groups x k x k); norm gamma U(0.5, 1.5) (U(0.2, 0.5) on the
    project norm of a residual block, so sums stay O(1)), beta N(0, 0.1) (N(0.5, 0.1) before
    a ReLU / hardswish: most units active), running mean N(0, 0.1), running var U(0.5, 2); SE
    fc1 He-normal, bias N(0, 0.1); fc2 N(0, 1 / fan_in), bias N(0, 0.5) (hardsigmoid gates
    spread over (0, 1)); num_batches_tracked int64.
    """
    rng = np.random.default_rng(seed)
    residual = {index for index, _, res in features_layout() if res}
    activated = {unit[1] for _, units, _ in features_layout() for unit in units
                 if unit[0] == "conv" and unit[7] is not None}
    state = {}
    for key, shape in features_state_dict_shapes().items():
        module = key.rsplit(".", 2)[0]
        if key.endswith("num_batches_tracked"):
            value = np.array(1000, np.int64)
        elif key.endswith(".fc2.weight"):
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        elif len(shape) == 4:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif key.endswith(".fc2.bias"):
            value = rng.standard_normal(shape) * 0.5
        elif key.endswith(".1.weight"):
            last = int(key.split(".")[0]) in residual and module not in activated
            value = rng.uniform(0.2, 0.5, shape) if last else rng.uniform(0.5, 1.5, shape)
        elif key.endswith(".1.bias") and module in activated:
            value = 0.5 + rng.standard_normal(shape) * 0.1
        elif key.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        else:  # norm bias, running_mean, fc1 bias
            value = rng.standard_normal(shape) * 0.1
        state[prefix + key] = value if value.dtype == np.int64 else value.astype(np.float32)
    return state


# fasterrcnn_mobilenet_v3_large_fpn (torchvision models/detection/faster_rcnn.py): FPN on
# features.13 and features.16 (LastLevelMaxPool adds "pool"), 5 anchor sizes x 3 ratios on each
# of its 3 levels, FasterRCNN defaults otherwise, plus rpn_score_thresh 0.05.
FASTERRCNN_WEIGHTS_URL = "https://download.pytorch.org/models/fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth"
FASTERRCNN_ANCHOR_SIZES = ((32, 64, 128, 256, 512),) * 3
FASTERRCNN_NUM_ANCHORS = 15
FASTERRCNN_RPN_SCORE_THRESHOLD = 0.05
# Gains of the seeded heads (fasterrcnn_layout.OUTPUT_SCALES otherwise): cls_score's gain 1.0
# (0.6 there) gives class logits of std ~3.5, so one class dominates each RoI: confident
# detections (at 160x224 and 224x160: 100 detections, scores 0.62..1.0).
FASTERRCNN_OUTPUT_SCALES = {"box_predictor.cls_score": (1.0, 0.0, 0.3)}


def fpn_in_channels():
    """Channels of the maps the FPN reads, finest first: (160, 960)."""
    return tuple(feature_channels(index) for index in FPN_FEATURES.values())


def random_fasterrcnn_mobilenet_state_dict(seed=0, num_classes=91):
    """Seeded float32 weights of fasterrcnn_mobilenet_v3_large_fpn in torchvision's layout: the
    body `random_features_state_dict(seed)` plus `fasterrcnn_layout.random_fasterrcnn_state_dict`'s
    FPN / RPN / RoI heads (FASTERRCNN_OUTPUT_SCALES)."""
    return random_fasterrcnn_state_dict(
        random_features_state_dict(seed), seed, num_classes, scales=FASTERRCNN_OUTPUT_SCALES,
        in_channels=fpn_in_channels(), num_anchors=FASTERRCNN_NUM_ANCHORS)
