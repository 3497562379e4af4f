"""detectron2's COCO R50-FPN 1x models -> FPNDetectors with the same outputs.

`from_detectron2("COCO-Detection/faster_rcnn_R_50_FPN_1x" or ".../retinanet_R_50_FPN_1x",
checkpoint)` builds the detector with every detectron2 convention set and loads the
checkpoint (.pkl from the model zoo, .pth, .safetensors, .npz; read without torch by
`convert.detectron2_checkpoint`). tests/test_detectron2.py proves FPN levels and detections
equal detectron2's (bench/detectron2_reference.py runs detectron2 itself).

The detectors (conventions as options of the existing modules; values in `detectron2_layout`):
  backbone `torchvision_resnet(50, stride_in_1x1=True, norm_epsilon=1e-5)` with
    TorchvisionNormalization(PIXEL_MEAN_BGR, PIXEL_STD, scale=1, channel_order="bgr"):
    our RGB 0..255 input reversed to BGR, minus the mean (MODEL.PIXEL_MEAN / PIXEL_STD);
  Faster R-CNN: neck P2-P6, P6 max-pooled from P5; RPN anchors 32..512 x (0.5, 1, 2) at
    offset 0, exact sides, strides 2**l; 1000 per level, boxes > 0, NMS 0.7 per level, 1000;
    RoI heads: ROIAlignV2 (aligned, sampling_ratio 0: adaptive), level floor(4 + log2(s / 224
    + 1e-8)) on P2-P5, fc1 / fc2 (1024), softmax with background last, deltas (10, 10, 5, 5),
    score > 0.05, NMS 0.5 per class, 100 detections, every (proposal, class) a candidate;
  RetinaNet: neck P3-P7, P6 / P7 from C5 (symmetric padding, ReLU before P7); anchors
    (32, 40.3, 50.8) x 2**(l-3) x (0.5, 1, 2), size-major, offset 0; score > 0.05 then top
    1000 per level, NMS 0.5 on unclipped boxes, clipped after, 100 detections.
Module map (detectron2 -> ours):
  backbone.bottom_up.<d2 name>            -> backbone layer <torchvision name> (`resnet_module`)
  backbone.fpn_lateral<l> / fpn_output<l> -> neck.lateral["C<l>"] / neck.output_convs["P<l>"]
  backbone.top_block.p6 / p7              -> neck.extra["P6"] / ["P7"]           (RetinaNet)
  head.cls_subnet.{0,2,4,6} / bbox_subnet -> head.head.cls_convs[i] / box_convs[i]
  head.cls_score / bbox_pred              -> head.head.cls_logits / box_deltas
  proposal_generator.rpn_head.conv / objectness_logits / anchor_deltas -> head.rpn.head.*
  roi_heads.box_head.fc1 / fc2            -> head.roi_heads.box_head.fcs[0] / [1] (fc1's
                                             inputs (c, y, x) -> (y, x, c))
  roi_heads.box_predictor.cls_score / bbox_pred -> box_head.cls_score / bbox_pred (as they are:
                                             80 classes + background last, 4 x 80 deltas)
Anchor order (size-major) and class order (80 contiguous ids, COCO's in increasing order)
are already ours: no other tensor changes.
"""

import numpy as np

from fpn_keras.convert.detectron2_checkpoint import read_detectron2_weights
from fpn_keras.convert.detectron2_layout import (CONFIGS, NORM_EPSILON, PIXEL_MEAN_BGR, PIXEL_STD, POOLED_SIZE,
                                                 RETINANET_ANCHOR_SIZES, RETINANET_POSTPROCESS, ROI_POSTPROCESS,
                                                 RPN_OPTIONS, FC_DIM, fc1_in_our_order, resnet_module)
from fpn_keras.convert.torchvision import assign_torch_weights
from fpn_keras.convert.torchvision_detection import (DEFAULT_IMAGE_SIZE, check_layout, coco_classes,
                                                     use_torchvision_transform)

SHORT_NAMES = {config.split("/")[1]: config for config in CONFIGS}  # "retinanet_R_50_FPN_1x" -> its config


def _config(name):
    config = SHORT_NAMES.get(name, name)
    if config not in CONFIGS:
        raise ValueError(f"unknown detectron2 config {name!r}; choose from {list(CONFIGS)} "
                         f"(or {list(SHORT_NAMES)})")
    return config


def detectron2_backbone():
    """detectron2's R-50 (MSRA: stride in the 1x1, FrozenBN eps 1e-5, BGR minus PIXEL_MEAN)."""
    from fpn_keras.models.torchvision_resnet import TorchvisionNormalization, torchvision_resnet

    normalization = TorchvisionNormalization(PIXEL_MEAN_BGR, PIXEL_STD, scale=1.0, channel_order="bgr",
                                             name="preprocessing")
    return torchvision_resnet(50, norm_epsilon=NORM_EPSILON, trainable_layers=3, stride_in_1x1=True,
                              normalization=normalization)  # FREEZE_AT 2: stem and res2 frozen


def detectron2_detector(config, num_classes=80, image_size=DEFAULT_IMAGE_SIZE, max_sampling_ratio=8):
    """An unbuilt FPNDetector with detectron2 `config`'s layout and conventions (module docstring).

    num_classes: 80 (COCO's, category_ids their ids). image_size: the canvas (height, width)
    stored in the model. max_sampling_ratio (Faster R-CNN): the bound of the adaptive RoIAlign
    (exact for RoIs up to 7 x max_sampling_ratio level pixels a side; 8: 56, i.e. 224 px on P2,
    448 on P3, 896 on P4, 1792 on P5, which only RoIs longer than 4 : 1 on P2-P4 exceed).
    """
    from fpn_keras.layers.fpn import FeaturePyramid
    from fpn_keras.models.detector import FPNDetector
    from fpn_keras.models.faster_rcnn import FasterRCNN
    from fpn_keras.models.retinanet import RetinaNet
    from fpn_keras.models.rpn import RPN

    config = _config(config)
    if num_classes != 80:
        raise ValueError(f"num_classes must be 80 (detectron2's COCO models), received {num_classes}")
    names, ids = coco_classes(num_classes)
    if "retinanet" in config:
        head = RetinaNet(num_classes, anchor_sizes=RETINANET_ANCHOR_SIZES, anchor_offset=0.0,
                         clip_before_nms=False, name="head", **RETINANET_POSTPROCESS)
        neck = FeaturePyramid(3, 7, 256, extra_levels_source="C5", conv_padding="symmetric", name="neck")
    else:
        rpn = RPN(2, 6, anchor_scale=8.0, aspect_ratios=(0.5, 1.0, 2.0), anchor_offset=0.0, name="rpn",
                  **RPN_OPTIONS)
        head = FasterRCNN(num_classes, rpn=rpn, pooled_size=POOLED_SIZE, sampling_ratio=0, fc_dim=FC_DIM, num_fc=2,
                          box_coder_weights=(10.0, 10.0, 5.0, 5.0),
                          pre_nms_topk=RPN_OPTIONS["post_nms_topk_test"] * num_classes, roi_aligned=True,
                          max_sampling_ratio=max_sampling_ratio, name="head", **ROI_POSTPROCESS)
        neck = FeaturePyramid(2, 6, 256, extra_levels_type="max_pool", name="neck")
    return FPNDetector(backbone=detectron2_backbone(), head=head, neck=neck, class_names=names,
                       category_ids=ids, image_size=image_size)


def _is_faster_rcnn(head):
    from fpn_keras.models.faster_rcnn import FasterRCNN

    return isinstance(head, FasterRCNN)


def detectron2_modules(detector):
    """{detectron2 module path: Keras layer} for every weighted layer of `detector`."""
    neck, head = detector.neck, detector.head
    modules = {f"backbone.bottom_up.{resnet_module(l.name)}": l for l in detector.backbone.layers if l.weights}
    for level in range(neck.min_level, 6):
        modules[f"backbone.fpn_lateral{level}"] = neck.lateral[f"C{level}"]
        modules[f"backbone.fpn_output{level}"] = neck.output_convs[f"P{level}"]
    if _is_faster_rcnn(head):
        rpn, box_head = head.rpn.head, head.roi_heads.box_head
        modules.update({"proposal_generator.rpn_head.conv": rpn.conv,
                        "proposal_generator.rpn_head.objectness_logits": rpn.objectness,
                        "proposal_generator.rpn_head.anchor_deltas": rpn.deltas,
                        "roi_heads.box_head.fc1": box_head.fcs[0], "roi_heads.box_head.fc2": box_head.fcs[1],
                        "roi_heads.box_predictor.cls_score": box_head.cls_score,
                        "roi_heads.box_predictor.bbox_pred": box_head.bbox_pred})
        return modules
    towers = head.head
    modules["backbone.top_block.p6"], modules["backbone.top_block.p7"] = neck.extra["P6"], neck.extra["P7"]
    for i, (cls_conv, box_conv) in enumerate(zip(towers.cls_convs, towers.box_convs)):
        modules[f"head.cls_subnet.{2 * i}"], modules[f"head.bbox_subnet.{2 * i}"] = cls_conv, box_conv
    modules["head.cls_score"], modules["head.bbox_pred"] = towers.cls_logits, towers.box_deltas
    return modules


def _check_detector(detector):
    neck, head = detector.neck, detector.head
    if _is_faster_rcnn(head):
        expected = {"neck levels": ((neck.min_level, neck.max_level), (2, 6)),
                    "P6": (neck.extra_levels_type, "max_pool"),
                    "box head": ((head.roi_heads.box_head.num_fc, head.roi_heads.box_head.fc_dim), (2, FC_DIM))}
    else:
        expected = {"neck levels": ((neck.min_level, neck.max_level), (3, 7)),
                    "P6/P7 source": (neck.extra_levels_source, "C5"), "head convs": (head.head.num_convs, 4)}
    check_layout("detectron2 R50-FPN", {"neck channels": (neck.channels, 256),
                                        "num_classes": (head.num_classes, 80), **expected})


def load_detectron2(detector, state_dict):
    """Sets a built FPNDetector of `detectron2_detector` from a detectron2 state_dict
    {name: np.ndarray}; all or nothing (ConversionError naming missing / unused / misshapen
    keys). Returns the keys used."""
    _check_detector(detector)
    state = dict(state_dict)
    fc1 = "roi_heads.box_head.fc1.weight"
    if fc1 in state and _is_faster_rcnn(detector.head):
        state[fc1] = fc1_in_our_order(state[fc1])
    return assign_torch_weights(detectron2_modules(detector), state, "")


def from_detectron2(config_name, checkpoint=None, num_classes=80, image_size=DEFAULT_IMAGE_SIZE,
                    max_sampling_ratio=8):
    """The FPNDetector of a detectron2 COCO R50-FPN 1x model, weights loaded (without torch).

    config_name: "COCO-Detection/faster_rcnn_R_50_FPN_1x" or "COCO-Detection/retinanet_R_50_FPN_1x"
        (or the part after the slash). checkpoint: None (untrained) or a file (.pkl model zoo,
        .pth, .safetensors, .npz). num_classes: 80. image_size: the canvas (height, width) stored
        in the model (default 800 x 1344: detectron2's short side 800, long side <= 1333, padded
        to 32). max_sampling_ratio: see `detectron2_detector`. Detections on a canvas are
        detectron2's on the same (BGR, padded) tensor when the canvas is the image; boxes xyxy.
    `predict_images` resizes to short side 800 / long side <= 1333 and pads with the pixel mean
    (0 after detectron2's normalisation): `short_side_resize`, `pad_value`; detectron2 rounds
    the new size (we floor, as torchvision) and resizes uint8 images with PIL, so its input
    pixels can differ slightly.
    """
    state = None if checkpoint is None else read_detectron2_weights(checkpoint)
    detector = detectron2_detector(config_name, num_classes, image_size, max_sampling_ratio)
    # INPUT.MIN_SIZE_TEST 800, MAX_SIZE_TEST 1333, padded with PIXEL_MEAN (= torchvision's mean x 255).
    use_torchvision_transform(detector, 800, 1333)
    detector(np.zeros((1, 64, 64, 3), np.float32))  # builds every layer
    if state is not None:
        load_detectron2(detector, state)
    return detector
