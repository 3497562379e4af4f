"""The Fast R-CNN box head (fpn_keras.layers.box_head)."""

import numpy as np

from fpn_keras.layers.box_head import BoxHead


def test_parameter_counts_match_detectron2_with_resnet50_channels():
    box_head = BoxHead(num_classes=90, fc_dim=1024, num_fc=2)
    box_head.build((None, None, 7, 7, 256))
    fcs = sum(fc.count_params() for fc in box_head.fcs)
    predictor = box_head.cls_score.count_params() + box_head.bbox_pred.count_params()
    assert fcs == (7 * 7 * 256 * 1024 + 1024) + (1024 * 1024 + 1024) == 13_895_680
    assert predictor == 1025 * 91 + 1025 * 360 == 462_275  # 91 logits + 90 x 4 class-specific deltas


def test_shapes_one_logit_per_class_plus_background_and_class_specific_deltas():
    box_head = BoxHead(num_classes=3, fc_dim=8, num_fc=2)
    cls_logits, box_deltas = box_head(np.zeros((2, 5, 7, 7, 4), "float32"))
    assert tuple(cls_logits.shape) == (2, 5, 4) and tuple(box_deltas.shape) == (2, 5, 3, 4)
