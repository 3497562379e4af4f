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


def test_conv_fc_head_parameter_count_matches_torchvision_v2():
    # FastRCNNConvFCHead((256, 7, 7), [256] * 4, [1024], BatchNorm2d): convs without bias.
    box_head = BoxHead(num_classes=90, fc_dim=1024, num_fc=1, num_conv=4, conv_dim=256, norm="batch",
                       norm_epsilon=1e-5)
    box_head.build((None, None, 7, 7, 256))
    convs = sum(c.count_params() for c in box_head.convs)
    assert convs == 4 * 9 * 256 * 256 and not box_head.convs[0].use_bias
    assert sum(n.count_params() for n in box_head.norms) == 4 * 4 * 256  # gamma, beta, mean, variance
    assert box_head.fcs[0].count_params() == 7 * 7 * 256 * 1024 + 1024
    clone = BoxHead.from_config(box_head.get_config())
    assert (clone.num_conv, clone.conv_dim, clone.norm, clone.norms[0].epsilon) == (4, 256, "batch", 1e-5)


def test_conv_runs_before_the_flatten_by_hand():
    # one 3x3 conv (centre tap 2, then BatchNorm mean 1 var 1 eps 0: y = 2x - 1), ReLU, fc = sum
    box_head = BoxHead(num_classes=1, fc_dim=1, num_fc=1, num_conv=1, conv_dim=1, norm="batch", norm_epsilon=0.0)
    box_head.build((None, None, 2, 2, 1))
    kernel = np.zeros((3, 3, 1, 1), "float32")
    kernel[1, 1] = 2.0
    box_head.convs[0].kernel.assign(kernel)
    box_head.norms[0].set_weights([np.ones(1), np.zeros(1), np.ones(1), np.ones(1)])
    box_head.fcs[0].set_weights([np.ones((4, 1), "float32"), np.zeros(1, "float32")])
    box_head.cls_score.set_weights([np.ones((1, 2), "float32"), np.zeros(2, "float32")])
    pooled = np.array([0.0, 1.0, 2.0, 3.0], "float32").reshape(1, 1, 2, 2, 1)
    cls_logits, _ = box_head(pooled)
    np.testing.assert_allclose(np.asarray(cls_logits)[0, 0], [0 + 1 + 3 + 5] * 2)  # relu(2x - 1) summed
