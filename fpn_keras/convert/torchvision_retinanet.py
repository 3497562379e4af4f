"""torchvision `retinanet_resnet50_fpn` state_dict -> an FPNDetector's backbone, neck and head.

The detector: backbone `torchvision_resnet(50)` (norm_epsilon=0.0 for COCO_V1),
neck `FeaturePyramid(3, 7, 256, extra_levels_source="P5")` and head
`RetinaNet(num_classes=80 or 91)` with 3 scales x 3 aspect ratios.

Module map (torchvision -> ours):
  backbone.body.<layer>                      -> backbone layer <layer> (convert.torchvision)
  backbone.fpn.inner_blocks.{0,1,2}.0        -> neck.lateral["C3".."C5"]     (1x1, bias)
  backbone.fpn.layer_blocks.{0,1,2}.0        -> neck.output_convs["P3".."P5"] (3x3, bias)
  backbone.fpn.extra_blocks.p6 / p7          -> neck.extra["P6"] / ["P7"]  (from P5: use_P5,
                                                 since in_channels == out_channels == 256)
  head.classification_head.conv.{i}.0        -> head.head.cls_convs[i]
  head.classification_head.cls_logits        -> head.head.cls_logits
  head.regression_head.conv.{i}.0            -> head.head.box_convs[i]
  head.regression_head.bbox_reg              -> head.head.box_deltas
Conventions the converter changes in the tensors:
  - anchor order within a location: torchvision's AnchorGenerator is ratio-major
    (a = ratio * 3 + scale), ours scale-major (a = scale * 3 + ratio): the output
    channels of cls_logits / bbox_reg are permuted per anchor block;
  - classes: torchvision's 91 logits per anchor are COCO category ids 0..90
    (0 and the 10 unused ids are "__background__" / "N/A"); an 80-class head
    takes the 80 real ids, in COCO_CLASS_NAMES order.
Conventions it cannot change (they live in existing modules, which would need
options for them): anchor centres (torchvision x * stride, our AnchorGenerator
(x + 0.5) * stride, offset not exposed by RetinaNet), anchor sizes (torchvision
int(32 * 2**(k/3)) = 32, 40, 50 and cell corners rounded to integers, ours exact),
and the stride-2 P6 / P7 convs (torch pads 1 on every side; FeaturePyramid's
"same" pads bottom/right only, so P6 / P7 differ where P5 / P6 has an even side;
bench/torchvision_retinanet_check.py shows both cases).
"""

import numpy as np

from fpn_keras.convert.torchvision import assign_torch_weights

COCO_UNUSED_IDS = (0, 12, 26, 29, 30, 45, 66, 68, 69, 71, 83)  # torchvision's __background__ / N/A
COCO_80_IDS = tuple(i for i in range(91) if i not in COCO_UNUSED_IDS)
NUM_SCALES = NUM_RATIOS = 3


def reorder_anchor_outputs(value, depth, keep=None):
    """cls_logits / bbox_reg weight [A*depth, ...] or bias [A*depth] from torchvision's
    (ratio, scale) anchor order to ours (scale, ratio); `keep`: indices along depth."""
    value = np.asarray(value)
    blocks = value.reshape((NUM_RATIOS, NUM_SCALES, depth) + value.shape[1:])
    blocks = blocks.transpose((1, 0, 2) + tuple(range(3, blocks.ndim)))
    if keep is not None:
        blocks = blocks[:, :, list(keep)]
    return blocks.reshape((-1,) + value.shape[1:])


def _check_detector(detector):
    neck, head = detector.neck, detector.head
    expected = {"neck levels": ((neck.min_level, neck.max_level), (3, 7)),
                "neck channels": (neck.channels, 256),
                "P6/P7 source": (neck.extra_levels_source, "P5"),
                "anchors per location": (head.head.num_anchors, NUM_SCALES * NUM_RATIOS),
                "head convs": (head.head.num_convs, 4)}
    wrong = [f"{name} {got!r} (torchvision: {want!r})" for name, (got, want) in expected.items() if got != want]
    if head.num_classes not in (80, 91):
        wrong.append(f"num_classes {head.num_classes} (80: COCO's classes, or 91: torchvision's ids)")
    if wrong:
        raise ValueError("detector does not have torchvision retinanet_resnet50_fpn's layout: " + "; ".join(wrong))


def torchvision_retinanet_modules(detector):
    """{torchvision module path: Keras layer} for every weighted layer of `detector`."""
    neck, towers = detector.neck, detector.head.head
    modules = {f"backbone.body.{l.name}": l for l in detector.backbone.layers if l.weights}
    for i, level in enumerate(range(3, 6)):
        modules[f"backbone.fpn.inner_blocks.{i}.0"] = neck.lateral[f"C{level}"]
        modules[f"backbone.fpn.layer_blocks.{i}.0"] = neck.output_convs[f"P{level}"]
    modules["backbone.fpn.extra_blocks.p6"] = neck.extra["P6"]
    modules["backbone.fpn.extra_blocks.p7"] = neck.extra["P7"]
    for name, convs in (("classification_head", towers.cls_convs), ("regression_head", towers.box_convs)):
        for i, conv in enumerate(convs):
            modules[f"head.{name}.conv.{i}.0"] = conv
    modules["head.classification_head.cls_logits"] = towers.cls_logits
    modules["head.regression_head.bbox_reg"] = towers.box_deltas
    return modules


def load_torchvision_retinanet(detector, state_dict):
    """Sets a built FPNDetector (see the module docstring) from a torchvision
    retinanet_resnet50_fpn state_dict {key: np.ndarray}; all or nothing. Returns the keys used."""
    _check_detector(detector)
    keep = COCO_80_IDS if detector.head.num_classes == 80 else None
    state = dict(state_dict)
    for key, depth, classes in (("head.classification_head.cls_logits", 91, keep),
                                ("head.regression_head.bbox_reg", 4, None)):
        for field in ("weight", "bias"):
            if f"{key}.{field}" in state:
                state[f"{key}.{field}"] = reorder_anchor_outputs(state[f"{key}.{field}"], depth, classes)
    return assign_torch_weights(torchvision_retinanet_modules(detector), state, "",
                                ignore=("backbone.body.fc.",))
