"""torchvision `fasterrcnn_resnet50_fpn_v2` -> an FPNDetector with the same detections.

`from_torchvision("fasterrcnn_resnet50_fpn_v2", weights=...)` (convert.torchvision_detection)
builds the detector (`torchvision_faster_rcnn_v2_detector`) and loads the state_dict
(`load_torchvision_faster_rcnn_v2`). tests/test_torchvision_faster_rcnn_v2.py proves every FPN
level, the RPN outputs, proposals, RoI-head outputs and detections equal torchvision's
(bench/torchvision_faster_rcnn_v2_reference.py).

What differs from fasterrcnn_resnet50_fpn (`torchvision_faster_rcnn`), each an option of the
module that owns it (`fasterrcnn_layout`'s v2 section):
  backbone BatchNorm eps 1e-5 (no overwrite_eps for the v2 weights);
  FPN lateral and output convs without bias, each followed by BatchNorm2d (eps 1e-5):
  `FeaturePyramid(norm="batch", norm_epsilon=1e-5)`;
  RPN head with two 3x3 convs: `RPN(conv_depth=2)`;
  box head FastRCNNConvFCHead: 4 x (3x3 conv 256 without bias, BatchNorm2d, ReLU), flatten,
  one fc 1024: `FasterRCNN(num_conv=4, conv_dim=256, box_head_norm="batch", num_fc=1)`.
Anchors, RPN / RoI settings, box coder (10, 10, 5, 5), postprocess and the class rows are v1's.
Module map: as `torchvision_faster_rcnn`'s, except
  backbone.fpn.inner_blocks.{i}.1 / layer_blocks.{i}.1 -> neck.lateral_norms / output_norms
  rpn.head.conv.1.0                    -> head.rpn.head.more_convs[0]
  roi_heads.box_head.{i}.0 / .{i}.1    -> box_head.convs[i] / box_head.norms[i]  (i < 4)
  roi_heads.box_head.5                 -> box_head.fcs[0] (inputs permuted: (c, y, x) -> (y, x, c))
"""

import numpy as np

from fpn_keras.convert.fasterrcnn_layout import (CHANNELS, FC_DIM, NORM_EPSILON_V2, NUM_ANCHORS, NUM_CONV_V2,
                                                 POOLED_SIZE, POSTPROCESS, RPN_CONV_DEPTH_V2, RPN_OPTIONS,
                                                 V2_FC, WEIGHTS_URL_V2, class_ids, fc6_in_our_order,
                                                 predictor_in_our_order)
from fpn_keras.convert.torchvision_detection import (DEFAULT_IMAGE_SIZE, assign_detection_weights,
                                                     backbone_fpn_modules, check_layout, coco_classes)

MODEL = "fasterrcnn_resnet50_fpn_v2"
WEIGHTS_URL = WEIGHTS_URL_V2
NORM_EPSILON = NORM_EPSILON_V2  # from_torchvision's default norm_epsilon for this model


def _check_detector(detector):
    neck, head = detector.neck, detector.head
    roi = getattr(head, "roi_heads", None)
    if roi is None:
        check_layout(MODEL, {"head": (type(head).__name__, "FasterRCNN")})
    box_head = roi.box_head
    wrong = [] if head.num_classes in (80, 90) else [
        f"num_classes {head.num_classes} (80: COCO's classes, or 90: torchvision's ids 1..90)"]
    check_layout(MODEL, {
        "neck levels": ((neck.min_level, neck.max_level), (2, 6)), "neck channels": (neck.channels, CHANNELS),
        "P6": (neck.extra_levels_type, "max_pool"), "neck norm": (neck.norm, "batch"),
        "anchors per location": (head.rpn.head.num_anchors, NUM_ANCHORS),
        "RPN conv depth": (head.rpn.head.conv_depth, RPN_CONV_DEPTH_V2),
        "RoI levels": ((head.roi_min_level, head.roi_max_level), (2, 5)),
        "pooled size": (roi.pooled_size, POOLED_SIZE),
        "box head": ((box_head.num_conv, box_head.conv_dim, box_head.norm, box_head.num_fc, box_head.fc_dim),
                     (NUM_CONV_V2, CHANNELS, "batch", 1, FC_DIM))}, wrong)


def torchvision_faster_rcnn_v2_modules(detector):
    """{torchvision module path: Keras layer} for every weighted layer of `detector`."""
    neck, rpn, box_head = detector.neck, detector.head.rpn.head, detector.head.roi_heads.box_head
    modules = backbone_fpn_modules(detector, (2, 3, 4, 5))
    for i, level in enumerate((2, 3, 4, 5)):
        modules[f"backbone.fpn.inner_blocks.{i}.1"] = neck.lateral_norms[f"C{level}"]
        modules[f"backbone.fpn.layer_blocks.{i}.1"] = neck.output_norms[f"P{level}"]
    modules.update({f"rpn.head.conv.{i}.0": conv for i, conv in enumerate([rpn.conv] + rpn.more_convs)})
    modules.update({"rpn.head.cls_logits": rpn.objectness, "rpn.head.bbox_pred": rpn.deltas})
    for i, (conv, norm) in enumerate(zip(box_head.convs, box_head.norms)):
        modules[f"roi_heads.box_head.{i}.0"], modules[f"roi_heads.box_head.{i}.1"] = conv, norm
    modules.update({V2_FC: box_head.fcs[0], "roi_heads.box_predictor.cls_score": box_head.cls_score,
                    "roi_heads.box_predictor.bbox_pred": box_head.bbox_pred})
    return modules


def load_torchvision_faster_rcnn_v2(detector, state_dict):
    """Sets a built FPNDetector (see the module docstring) from a torchvision
    fasterrcnn_resnet50_fpn_v2 state_dict {key: np.ndarray} (91 outputs); all or nothing.
    Returns the keys used."""
    _check_detector(detector)
    ids = class_ids({80: 80, 90: 91}[detector.head.num_classes])
    return assign_detection_weights(torchvision_faster_rcnn_v2_modules(detector), state_dict, {
        V2_FC: lambda value: fc6_in_our_order(value) if np.ndim(value) == 2 else value,
        "roi_heads.box_predictor.cls_score": lambda value: predictor_in_our_order(value, 1, ids),
        "roi_heads.box_predictor.bbox_pred": lambda value: predictor_in_our_order(value, 4, ids)})


def torchvision_faster_rcnn_v2_detector(num_classes=80, image_size=DEFAULT_IMAGE_SIZE, norm_epsilon=NORM_EPSILON):
    """An unbuilt FPNDetector with torchvision fasterrcnn_resnet50_fpn_v2's layout and conventions.

    num_classes: 80 (COCO's classes) or 91 (torchvision's 91 outputs: 90 classes, ids 1..90).
    image_size: the canvas (height, width) stored in the model. norm_epsilon: the backbone's
    BatchNorm epsilon (torchvision's 1e-5; the FPN's and box head's are 1e-5 too).
    """
    from fpn_keras.layers.fpn import FeaturePyramid
    from fpn_keras.models.detector import FPNDetector
    from fpn_keras.models.faster_rcnn import FasterRCNN
    from fpn_keras.models.rpn import RPN
    from fpn_keras.models.torchvision_resnet import torchvision_resnet

    names, ids = coco_classes(num_classes, background=False)
    rpn = RPN(2, 6, anchor_scale=8.0, aspect_ratios=(0.5, 1.0, 2.0), anchor_offset=0.0, round_anchors=True,
              anchor_strides="image_over_grid", conv_depth=RPN_CONV_DEPTH_V2, name="rpn", **RPN_OPTIONS)
    head = FasterRCNN(len(ids), rpn=rpn, pooled_size=POOLED_SIZE, sampling_ratio=2, fc_dim=FC_DIM, num_fc=1,
                      num_conv=NUM_CONV_V2, conv_dim=CHANNELS, box_head_norm="batch",
                      box_head_norm_epsilon=NORM_EPSILON_V2, box_coder_weights=(10.0, 10.0, 5.0, 5.0),
                      pre_nms_topk=RPN_OPTIONS["post_nms_topk_test"] * len(ids), roi_aligned=False,
                      roi_level_epsilon=1e-6, name="head", **POSTPROCESS)
    neck = FeaturePyramid(2, 6, CHANNELS, extra_levels_type="max_pool", norm="batch", norm_epsilon=NORM_EPSILON_V2,
                          name="neck")
    backbone = torchvision_resnet(50, norm_epsilon=norm_epsilon, trainable_layers=3)
    return FPNDetector(backbone=backbone, head=head, neck=neck, class_names=names, category_ids=ids,
                       image_size=image_size)


# for from_torchvision
build_detector, load_state = torchvision_faster_rcnn_v2_detector, load_torchvision_faster_rcnn_v2

__all__ = ["load_torchvision_faster_rcnn_v2", "torchvision_faster_rcnn_v2_detector",
           "torchvision_faster_rcnn_v2_modules"]
