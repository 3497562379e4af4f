"""torchvision `fasterrcnn_resnet50_fpn` -> an FPNDetector with the same detections.

`from_torchvision("fasterrcnn_resnet50_fpn", weights=...)` (convert.torchvision_detection)
builds the detector with every torchvision convention set (`torchvision_faster_rcnn_detector`)
and loads the state_dict (`load_torchvision_faster_rcnn`). tests/test_torchvision_faster_rcnn.py
proves RPN outputs, proposals, RoI-head outputs and detections equal torchvision's
(bench/torchvision_faster_rcnn_reference.py).

The detector (conventions as options of the existing modules):
  backbone `torchvision_resnet(50)`, FrozenBatchNorm with eps 0.0 (COCO_V1: overwrite_eps);
  neck `FeaturePyramid(2, 6, extra_levels_type="max_pool")` (P6: P5[::2, ::2], LastLevelMaxPool);
  RPN on P2-P6: anchors 32..512 x ratios (0.5, 1, 2) at x * stride, corners rounded, strides
  canvas // grid; 1000 per level, boxes >= 1e-3, NMS 0.7 per level, 1000 proposals;
  RoI heads: RoIAlign 7x7, sampling 2, aligned=False, level mapper epsilon 1e-6 (P2-P5),
  fc6 / fc7 (1024), softmax, class-specific deltas (10, 10, 5, 5), boxes >= 1e-2,
  score > 0.05, NMS 0.5 per class, 100 detections, every (proposal, class) a candidate.
Module map (torchvision -> ours):
  backbone.body.<layer>                -> backbone layer <layer> (convert.torchvision)
  backbone.fpn.inner_blocks.{0..3}.0   -> neck.lateral["C2".."C5"]      (1x1, bias)
  backbone.fpn.layer_blocks.{0..3}.0   -> neck.output_convs["P2".."P5"] (3x3, bias)
  rpn.head.conv.0.0 / cls_logits / bbox_pred -> head.rpn.head.conv / objectness / deltas
  roi_heads.box_head.fc6 / fc7         -> head.roi_heads.box_head.fcs[0] / [1]
  roi_heads.box_predictor.cls_score / bbox_pred -> box_head.cls_score / bbox_pred
The tensors change (`fasterrcnn_layout`): fc6's inputs from torchvision's (c, y, x) flattening
to ours (y, x, c); the predictor's rows from background-first 91 ids to our K classes then
background (num_classes=80: the 80 real ids; 91: ids 1..90, N/A included, as 90 classes).
With 80 classes the softmax leaves out the 10 N/A logits: each score is torchvision's times
1 + (sum of the N/A exp-logits) / (the rest), exact only with num_classes=91.
"""

import numpy as np

from fpn_keras.convert.fasterrcnn_layout import (FC_DIM, NUM_ANCHORS, POOLED_SIZE, POSTPROCESS, RPN_OPTIONS,
                                                 WEIGHTS_URL, class_ids, fc6_in_our_order,
                                                 predictor_in_our_order)
from fpn_keras.convert.torchvision_detection import (DEFAULT_IMAGE_SIZE, assign_detection_weights,
                                                     backbone_fpn_modules, check_layout, coco_classes)

MODEL = "fasterrcnn_resnet50_fpn"


def _num_classes(head):
    """torchvision's num_classes (80 or 91) of our head: 80 classes, or 90 (ids 1..90)."""
    return {80: 80, 90: 91}.get(head.num_classes)


def _check_detector(detector):
    neck, head = detector.neck, detector.head
    roi = getattr(head, "roi_heads", None)
    if roi is None:
        check_layout(MODEL, {"head": (type(head).__name__, "FasterRCNN")})
    wrong = [] if _num_classes(head) else [
        f"num_classes {head.num_classes} (80: COCO's classes, or 90: torchvision's ids 1..90)"]
    check_layout(MODEL, {
        "neck levels": ((neck.min_level, neck.max_level), (2, 6)), "neck channels": (neck.channels, 256),
        "P6": (neck.extra_levels_type, "max_pool"),
        "anchors per location": (head.rpn.head.num_anchors, NUM_ANCHORS),
        "RoI levels": ((head.roi_min_level, head.roi_max_level), (2, 5)),
        "pooled size": (roi.pooled_size, POOLED_SIZE),
        "box head": ((roi.box_head.num_fc, roi.box_head.fc_dim), (2, FC_DIM))}, wrong)


def torchvision_faster_rcnn_modules(detector, levels=(2, 3, 4, 5)):
    """{torchvision module path: Keras layer} for every weighted layer of `detector` (FPN inputs
    C<levels>, finest first)."""
    rpn, box_head = detector.head.rpn.head, detector.head.roi_heads.box_head
    modules = backbone_fpn_modules(detector, levels)
    modules.update({"rpn.head.conv.0.0": rpn.conv, "rpn.head.cls_logits": rpn.objectness,
                    "rpn.head.bbox_pred": rpn.deltas,
                    "roi_heads.box_head.fc6": box_head.fcs[0], "roi_heads.box_head.fc7": box_head.fcs[1],
                    "roi_heads.box_predictor.cls_score": box_head.cls_score,
                    "roi_heads.box_predictor.bbox_pred": box_head.bbox_pred})
    return modules


def load_torchvision_faster_rcnn(detector, state_dict):
    """Sets a built FPNDetector (see the module docstring) from a torchvision
    fasterrcnn_resnet50_fpn state_dict {key: np.ndarray} (91 outputs); all or nothing.
    Returns the keys used."""
    _check_detector(detector)
    return assign_detection_weights(torchvision_faster_rcnn_modules(detector), state_dict,
                                    faster_rcnn_weight_transforms(class_ids(_num_classes(detector.head))))


def faster_rcnn_weight_transforms(ids):
    """{module path: function of a tensor}: fc6's inputs to our (y, x, c) order, the predictor's
    rows to our classes `ids` (COCO ids) then background."""
    return {"roi_heads.box_head.fc6": lambda value: fc6_in_our_order(value) if np.ndim(value) == 2 else value,
            "roi_heads.box_predictor.cls_score": lambda value: predictor_in_our_order(value, 1, ids),
            "roi_heads.box_predictor.bbox_pred": lambda value: predictor_in_our_order(value, 4, ids)}


def torchvision_faster_rcnn_detector(num_classes=80, image_size=DEFAULT_IMAGE_SIZE, norm_epsilon=0.0):
    """An unbuilt FPNDetector with torchvision fasterrcnn_resnet50_fpn's layout and conventions.

    num_classes: 80 (COCO's classes, category_ids the COCO ids) or 91 (torchvision's 91
    outputs: 90 classes, category_ids 1..90, "N/A" named). image_size, norm_epsilon: as
    `torchvision_retinanet_detector`'s.
    """
    from fpn_keras.layers.fpn import FeaturePyramid
    from fpn_keras.models.detector import FPNDetector
    from fpn_keras.models.faster_rcnn import FasterRCNN
    from fpn_keras.models.rpn import RPN
    from fpn_keras.models.torchvision_resnet import torchvision_resnet

    names, ids = coco_classes(num_classes, background=False)
    rpn = RPN(2, 6, anchor_scale=8.0, aspect_ratios=(0.5, 1.0, 2.0), anchor_offset=0.0, round_anchors=True,
              anchor_strides="image_over_grid", name="rpn", **RPN_OPTIONS)
    head = FasterRCNN(len(ids), rpn=rpn, pooled_size=POOLED_SIZE, sampling_ratio=2, fc_dim=FC_DIM, num_fc=2,
                      box_coder_weights=(10.0, 10.0, 5.0, 5.0), pre_nms_topk=RPN_OPTIONS["post_nms_topk_test"]
                      * len(ids), roi_aligned=False, roi_level_epsilon=1e-6, name="head", **POSTPROCESS)
    neck = FeaturePyramid(2, 6, 256, extra_levels_type="max_pool", name="neck")
    backbone = torchvision_resnet(50, norm_epsilon=norm_epsilon, trainable_layers=3)
    return FPNDetector(backbone=backbone, head=head, neck=neck, class_names=names, category_ids=ids,
                       image_size=image_size)


NORM_EPSILON = 0.0  # COCO_V1: torchvision calls overwrite_eps(model, 0.0)
build_detector, load_state = torchvision_faster_rcnn_detector, load_torchvision_faster_rcnn  # for from_torchvision

__all__ = ["load_torchvision_faster_rcnn", "torchvision_faster_rcnn_detector", "torchvision_faster_rcnn_modules"]
