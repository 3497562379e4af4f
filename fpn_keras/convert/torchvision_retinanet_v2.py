"""torchvision `retinanet_resnet50_fpn_v2` -> an FPNDetector with the same detections.

`from_torchvision("retinanet_resnet50_fpn_v2", weights=...)` (convert.torchvision_detection)
builds the detector (`torchvision_retinanet_v2_detector`) and loads the state_dict
(`load_torchvision_retinanet_v2`). tests/test_torchvision_retinanet_v2.py proves every FPN
level, the head outputs, anchors and detections equal torchvision's
(bench/torchvision_retinanet_v2_reference.py).

What differs from retinanet_resnet50_fpn (`torchvision_retinanet`), each an option of the
module that owns it:
  backbone BatchNorm eps 1e-5 (the v2 weights keep torchvision's eps: no overwrite_eps);
  P6 / P7 from C5 (LastLevelP6P7(2048, 256)): `FeaturePyramid(extra_levels_source="C5")`;
  the towers' convs followed by GroupNorm(32, eps 1e-5): `RetinaNet(norm="group",
  norm_epsilon=1e-5)`; torchvision's convs there have no bias (Conv2dNormActivation), ours
  are loaded with a zero bias;
  training: GIoU box loss on decoded boxes (`RetinaNet(box_loss="giou")`; torchvision's
  regression_head._loss_type "giou", summed over foreground anchors / their number).
Anchors, box coder (weights 1, 1, 1, 1), postprocess and the output reordering are v1's.
Module map: as `torchvision_retinanet`'s, plus
  head.classification_head.conv.{i}.1 -> head.head.cls_norms[i]   (GroupNorm weight, bias)
  head.regression_head.conv.{i}.1     -> head.head.box_norms[i]
"""

import numpy as np

from fpn_keras.convert.retinanet_layout import (ANCHOR_SIZES, COCO_80_IDS, NORM_EPSILON_V2, NUM_RATIOS,
                                                NUM_SCALES, POSTPROCESS, WEIGHTS_URL_V2,
                                                reorder_anchor_outputs)
from fpn_keras.convert.torchvision_detection import (DEFAULT_IMAGE_SIZE, assign_detection_weights,
                                                     check_layout, coco_classes)
from fpn_keras.convert.torchvision_retinanet import torchvision_retinanet_modules

MODEL = "retinanet_resnet50_fpn_v2"
WEIGHTS_URL = WEIGHTS_URL_V2
NORM_EPSILON = NORM_EPSILON_V2  # from_torchvision's default norm_epsilon for this model
TOWERS = (("classification_head", "cls"), ("regression_head", "box"))


def _check_detector(detector):
    neck, towers = detector.neck, detector.head.head
    wrong = [] if detector.head.num_classes in (80, 91) else [
        f"num_classes {detector.head.num_classes} (80: COCO's classes, or 91: torchvision's ids)"]
    check_layout(MODEL, {
        "neck levels": ((neck.min_level, neck.max_level), (3, 7)), "neck channels": (neck.channels, 256),
        "P6/P7 source": (neck.extra_levels_source, "C5"),
        "anchors per location": (towers.num_anchors, NUM_SCALES * NUM_RATIOS),
        "head convs": (towers.num_convs, 4), "head norm": (towers.norm, "group")}, wrong)


def torchvision_retinanet_v2_modules(detector):
    """{torchvision module path: Keras layer} for every weighted layer of `detector`."""
    towers = detector.head.head
    modules = torchvision_retinanet_modules(detector)
    for name, prefix in TOWERS:
        for i, norm in enumerate(getattr(towers, f"{prefix}_norms")):
            modules[f"head.{name}.conv.{i}.1"] = norm
    return modules


def load_torchvision_retinanet_v2(detector, state_dict):
    """Sets a built FPNDetector (see the module docstring) from a torchvision
    retinanet_resnet50_fpn_v2 state_dict {key: np.ndarray}; all or nothing. Returns the keys used
    (the towers' zero conv biases, which torchvision does not have, are not among them)."""
    _check_detector(detector)
    keep = COCO_80_IDS if detector.head.num_classes == 80 else None
    state = dict(state_dict)
    zero_biases = []
    for name, _ in TOWERS:  # Conv2dNormActivation has no bias before its GroupNorm
        for i in range(detector.head.head.num_convs):
            key = f"head.{name}.conv.{i}.0.bias"
            weight = state.get(f"head.{name}.conv.{i}.0.weight")
            if key not in state and weight is not None:
                state[key] = np.zeros(np.shape(weight)[:1], np.float32)
                zero_biases.append(key)
    used = assign_detection_weights(torchvision_retinanet_v2_modules(detector), state, {
        "head.classification_head.cls_logits": lambda value: reorder_anchor_outputs(value, 91, keep),
        "head.regression_head.bbox_reg": lambda value: reorder_anchor_outputs(value, 4)})
    return [key for key in used if key not in zero_biases]


def torchvision_retinanet_v2_detector(num_classes=80, image_size=DEFAULT_IMAGE_SIZE, norm_epsilon=NORM_EPSILON):
    """An unbuilt FPNDetector with torchvision retinanet_resnet50_fpn_v2's layout and conventions.

    num_classes: 80 (COCO's classes, category_ids the COCO ids) or 91 (torchvision's ids).
    image_size: the canvas (height, width) stored in the model.
    norm_epsilon: the backbone's BatchNorm epsilon (torchvision's 1e-5).
    """
    from fpn_keras.layers.fpn import FeaturePyramid
    from fpn_keras.models.detector import FPNDetector
    from fpn_keras.models.retinanet import RetinaNet
    from fpn_keras.models.torchvision_resnet import torchvision_resnet

    names, ids = coco_classes(num_classes)
    head = RetinaNet(num_classes=num_classes, anchor_sizes=ANCHOR_SIZES, anchor_offset=0.0, round_anchors=True,
                     anchor_strides="image_over_grid", norm="group", norm_epsilon=NORM_EPSILON_V2,
                     box_loss="giou", name="head", **POSTPROCESS)
    neck = FeaturePyramid(3, 7, 256, extra_levels_source="C5", conv_padding="symmetric", name="neck")
    backbone = torchvision_resnet(50, norm_epsilon=norm_epsilon, trainable_layers=3)
    return FPNDetector(backbone=backbone, head=head, neck=neck, class_names=names, category_ids=ids,
                       image_size=image_size)


build_detector, load_state = torchvision_retinanet_v2_detector, load_torchvision_retinanet_v2  # for from_torchvision

__all__ = ["load_torchvision_retinanet_v2", "torchvision_retinanet_v2_detector", "torchvision_retinanet_v2_modules"]
