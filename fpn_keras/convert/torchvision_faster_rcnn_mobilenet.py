"""torchvision `fasterrcnn_mobilenet_v3_large_fpn` -> an FPNDetector with the same detections.

`from_torchvision("fasterrcnn_mobilenet_v3_large_fpn", weights=...)` (convert.torchvision_detection)
builds the detector (`torchvision_faster_rcnn_mobilenet_detector`) and loads the state_dict
(`load_torchvision_faster_rcnn_mobilenet`). tests/test_torchvision_mobilenet.py proves backbone
maps, every FPN level and the detections equal torchvision's (bench/torchvision_mobilenet_reference.py).

The detector (conventions as options of the existing modules; torchvision's names in quotes):
  backbone `torchvision_mobilenet_v3_large(feature_maps="fpn")`: {"C4": features.13 (160 ch),
  "C5": features.16 (960 ch)}, BOTH at stride 32, FrozenBatchNorm eps 1e-5 (no overwrite_eps);
  neck `FeaturePyramid(4, 6, top_down_upsampling=1, extra_levels_type="max_pool")`: P4 "0",
  P5 "1" (both stride 32, no upsampling between them), P6 "pool" (P5[::2, ::2], stride 64);
  RPN on P4-P6: 15 anchors per location, sides (32, 64, 128, 256, 512) x ratios (0.5, 1, 2) on
  every level, at x * stride, corners rounded, strides canvas // grid; 1000 per level, boxes
  >= 1e-3, objectness >= 0.05 (rpn_score_thresh), NMS 0.7 per level, 1000 proposals;
  RoI heads on P4 alone (MultiScaleRoIAlign infers scale 1/32 for "0" and "1", so its level
  mapper has one level, "0") at stride 32: RoIAlign 7x7, sampling 2, aligned=False; then as
  fasterrcnn_resnet50_fpn (fc6 / fc7 1024, softmax, (10, 10, 5, 5), score > 0.05, NMS 0.5, 100).
Module map: backbone.body.<i>... -> backbone layer <i>... (torchvision's paths in `features`);
backbone.fpn.{inner,layer}_blocks.{0,1}.0 -> neck lateral C4 / C5, output P4 / P5; the RPN and RoI
heads as `torchvision_faster_rcnn`. The tensors change: the RPN's 15 outputs per location from
torchvision's ratio-major anchor order to our size-major one; fc6 and the predictor as there.
"""

from fpn_keras.convert.fasterrcnn_layout import FC_DIM, POOLED_SIZE, POSTPROCESS, RPN_OPTIONS, class_ids
from fpn_keras.convert.mobilenet_v3_layout import (FASTERRCNN_ANCHOR_SIZES, FASTERRCNN_NUM_ANCHORS,
                                                   FASTERRCNN_RPN_SCORE_THRESHOLD, FASTERRCNN_WEIGHTS_URL)
from fpn_keras.convert.retinanet_layout import reorder_anchor_outputs
from fpn_keras.convert.torchvision_detection import (DEFAULT_IMAGE_SIZE, assign_detection_weights, check_layout,
                                                     coco_classes)
from fpn_keras.convert.torchvision_faster_rcnn import (faster_rcnn_weight_transforms,
                                                       torchvision_faster_rcnn_modules)

MODEL = "fasterrcnn_mobilenet_v3_large_fpn"
WEIGHTS_URL = FASTERRCNN_WEIGHTS_URL
NUM_SIZES = len(FASTERRCNN_ANCHOR_SIZES[0])
NORM_EPSILON = 1e-5  # torchvision's FrozenBatchNorm2d default; the builder does not overwrite it


def _check_detector(detector):
    neck, head = detector.neck, detector.head
    if getattr(head, "roi_heads", None) is None:
        check_layout(MODEL, {"head": (type(head).__name__, "FasterRCNN")})
    check_layout(MODEL, {
        "backbone maps": (sorted(detector.backbone.output), ["C4", "C5"]),
        "neck levels": ((neck.min_level, neck.max_level), (4, 6)), "neck channels": (neck.channels, 256),
        "top-down upsampling": (neck.top_down_upsampling, 1), "P6": (neck.extra_levels_type, "max_pool"),
        "anchors per location": (head.rpn.head.num_anchors, FASTERRCNN_NUM_ANCHORS),
        "RoI levels": ((head.roi_min_level, head.roi_max_level), (4, 4)),
        "RoI stride": (head.roi_heads.feature_strides, (32.0,)),
        "pooled size": (head.roi_heads.pooled_size, POOLED_SIZE),
        "box head": ((head.roi_heads.box_head.num_fc, head.roi_heads.box_head.fc_dim), (2, FC_DIM))},
        [] if head.num_classes in (80, 90) else [
            f"num_classes {head.num_classes} (80: COCO's classes, or 90: torchvision's ids 1..90)"])


def load_torchvision_faster_rcnn_mobilenet(detector, state_dict):
    """Sets a built FPNDetector (see the module docstring) from a torchvision
    fasterrcnn_mobilenet_v3_large_fpn state_dict {key: np.ndarray} (91 outputs); all or nothing.
    Returns the keys used."""
    _check_detector(detector)
    transforms = faster_rcnn_weight_transforms(class_ids({80: 80, 90: 91}[detector.head.num_classes]))
    for name, depth in (("cls_logits", 1), ("bbox_pred", 4)):
        transforms[f"rpn.head.{name}"] = lambda value, depth=depth: reorder_anchor_outputs(
            value, depth, num_scales=NUM_SIZES)
    return assign_detection_weights(torchvision_faster_rcnn_modules(detector, levels=(4, 5)), state_dict,
                                    transforms)


def torchvision_faster_rcnn_mobilenet_detector(num_classes=80, image_size=DEFAULT_IMAGE_SIZE,
                                               norm_epsilon=NORM_EPSILON):
    """An unbuilt FPNDetector with torchvision fasterrcnn_mobilenet_v3_large_fpn's layout and
    conventions. num_classes: 80 (COCO's classes) or 91 (torchvision's 91 outputs: 90 classes,
    ids 1..90). image_size: the canvas stored in the model (torchvision resizes to a short side
    of 800, long side <= 1333). norm_epsilon: FrozenBatchNorm epsilon (1e-5, as torchvision's).
    """
    from fpn_keras.layers.fpn import FeaturePyramid
    from fpn_keras.models.detector import FPNDetector
    from fpn_keras.models.faster_rcnn import FasterRCNN
    from fpn_keras.models.rpn import RPN
    from fpn_keras.models.torchvision_mobilenet_v3 import torchvision_mobilenet_v3_large

    names, ids = coco_classes(num_classes, background=False)
    # anchor_scales only counts the sizes: anchor_sizes gives every level's sides.
    rpn = RPN(4, 6, aspect_ratios=(0.5, 1.0, 2.0), anchor_scales=(1.0,) * NUM_SIZES, anchor_offset=0.0,
              anchor_sizes=FASTERRCNN_ANCHOR_SIZES, round_anchors=True, anchor_strides="image_over_grid",
              score_threshold=FASTERRCNN_RPN_SCORE_THRESHOLD, name="rpn", **RPN_OPTIONS)
    head = FasterRCNN(len(ids), rpn=rpn, roi_min_level=4, roi_max_level=4, roi_feature_strides=(32,),
                      pooled_size=POOLED_SIZE, sampling_ratio=2, fc_dim=FC_DIM, num_fc=2,
                      box_coder_weights=(10.0, 10.0, 5.0, 5.0),
                      pre_nms_topk=RPN_OPTIONS["post_nms_topk_test"] * len(ids), roi_aligned=False,
                      roi_level_epsilon=1e-6, name="head", **POSTPROCESS)
    neck = FeaturePyramid(4, 6, 256, extra_levels_type="max_pool", top_down_upsampling=1, name="neck")
    backbone = torchvision_mobilenet_v3_large(norm_epsilon=norm_epsilon, trainable_layers=3, feature_maps="fpn")
    return FPNDetector(backbone=backbone, head=head, neck=neck, class_names=names, category_ids=ids,
                       image_size=image_size)


build_detector, load_state = torchvision_faster_rcnn_mobilenet_detector, load_torchvision_faster_rcnn_mobilenet

__all__ = ["load_torchvision_faster_rcnn_mobilenet", "torchvision_faster_rcnn_mobilenet_detector"]
