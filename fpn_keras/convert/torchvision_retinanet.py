"""torchvision `retinanet_resnet50_fpn` -> an FPNDetector with the same detections.

`from_torchvision("retinanet_resnet50_fpn", weights=...)` (convert.torchvision_detection) builds the detector with every
torchvision convention set (`torchvision_retinanet_detector`) and loads the state_dict
(`load_torchvision_retinanet`). tests/test_torchvision_retinanet.py proves head outputs,
anchors and detections equal torchvision's (bench/torchvision_retinanet_reference.py).

The detector (conventions as options of the existing modules):
  backbone `torchvision_resnet(50)`, FrozenBatchNorm with eps 0.0 (COCO_V1: overwrite_eps);
  neck `FeaturePyramid(3, 7, extra_levels_source="P5", conv_padding="symmetric")`;
  head `RetinaNet(anchor_sizes=((32, 40, 50), ...), anchor_offset=0.0, round_anchors=True,
  anchor_strides="image_over_grid")`, torchvision's postprocess (score > 0.05 per level,
  1000 candidates per level, class-aware NMS 0.5, 300 detections, dw / dh clamped at
  log(1000 / 16), boxes clipped to the canvas).
Module map (torchvision -> ours):
  backbone.body.<layer>                      -> backbone layer <layer> (convert.torchvision)
  backbone.fpn.inner_blocks.{0,1,2}.0        -> neck.lateral["C3".."C5"]     (1x1, bias)
  backbone.fpn.layer_blocks.{0,1,2}.0        -> neck.output_convs["P3".."P5"] (3x3, bias)
  backbone.fpn.extra_blocks.p6 / p7          -> neck.extra["P6"] / ["P7"]  (from P5)
  head.classification_head.conv.{i}.0        -> head.head.cls_convs[i]
  head.classification_head.cls_logits        -> head.head.cls_logits
  head.regression_head.conv.{i}.0            -> head.head.box_convs[i]
  head.regression_head.bbox_reg              -> head.head.box_deltas
The tensors change in two ways (`retinanet_layout`): the output channels of cls_logits /
bbox_reg are permuted from torchvision's ratio-major anchors to our scale-major ones, and
an 80-class head keeps the logits of the 80 real COCO ids (category_ids = those ids).
"""

from fpn_keras.convert.retinanet_layout import (ANCHOR_SIZES, COCO_80_IDS, COCO_UNUSED_IDS, NUM_RATIOS,
                                                NUM_SCALES, POSTPROCESS, WEIGHTS_URL,
                                                reorder_anchor_outputs)
from fpn_keras.convert.torchvision_detection import (DEFAULT_IMAGE_SIZE, assign_detection_weights,
                                                     backbone_fpn_modules, check_layout, coco_classes,
                                                     from_torchvision)


def _check_detector(detector):
    neck, head = detector.neck, detector.head
    wrong = [] if head.num_classes in (80, 91) else [
        f"num_classes {head.num_classes} (80: COCO's classes, or 91: torchvision's ids)"]
    check_layout("retinanet_resnet50_fpn", {
        "neck levels": ((neck.min_level, neck.max_level), (3, 7)), "neck channels": (neck.channels, 256),
        "P6/P7 source": (neck.extra_levels_source, "P5"),
        "anchors per location": (head.head.num_anchors, NUM_SCALES * NUM_RATIOS),
        "head convs": (head.head.num_convs, 4)}, wrong)


def torchvision_retinanet_modules(detector):
    """{torchvision module path: Keras layer} for every weighted layer of `detector`."""
    neck, towers = detector.neck, detector.head.head
    modules = backbone_fpn_modules(detector, (3, 4, 5))
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
    return assign_detection_weights(torchvision_retinanet_modules(detector), state_dict, {
        "head.classification_head.cls_logits": lambda value: reorder_anchor_outputs(value, 91, keep),
        "head.regression_head.bbox_reg": lambda value: reorder_anchor_outputs(value, 4)})


def torchvision_retinanet_detector(num_classes=80, image_size=DEFAULT_IMAGE_SIZE, norm_epsilon=0.0):
    """An unbuilt FPNDetector with torchvision retinanet_resnet50_fpn's layout and conventions.

    num_classes: 80 (COCO's classes, category_ids the COCO ids) or 91 (torchvision's ids).
    image_size: the canvas (height, width) stored in the model, which predict / evaluate /
        export fit images into (aspect kept, padded bottom / right).
    norm_epsilon: BatchNorm epsilon (0.0 for the COCO_V1 weights, 1e-5 for a torchvision
        model built without overwrite_eps).
    """
    from fpn_keras.layers.fpn import FeaturePyramid
    from fpn_keras.models.detector import FPNDetector
    from fpn_keras.models.retinanet import RetinaNet
    from fpn_keras.models.torchvision_resnet import torchvision_resnet

    names, ids = coco_classes(num_classes)
    head = RetinaNet(num_classes=num_classes, anchor_sizes=ANCHOR_SIZES, anchor_offset=0.0, round_anchors=True,
                     anchor_strides="image_over_grid", name="head", **POSTPROCESS)
    neck = FeaturePyramid(3, 7, 256, extra_levels_source="P5", conv_padding="symmetric", name="neck")
    backbone = torchvision_resnet(50, norm_epsilon=norm_epsilon, trainable_layers=3)
    return FPNDetector(backbone=backbone, head=head, neck=neck, class_names=names, category_ids=ids,
                       image_size=image_size)


NORM_EPSILON = 0.0  # COCO_V1: torchvision calls overwrite_eps(model, 0.0)
build_detector, load_state = torchvision_retinanet_detector, load_torchvision_retinanet  # for from_torchvision


__all__ = ["COCO_80_IDS", "COCO_UNUSED_IDS", "from_torchvision", "load_torchvision_retinanet",
           "reorder_anchor_outputs", "torchvision_retinanet_detector"]
