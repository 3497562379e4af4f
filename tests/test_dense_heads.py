import math

import keras
import numpy as np
import pytest

from fpn_keras.layers.dense_heads import RetinaNetHead, RPNHead


def test_shapes_and_shared_weights_across_levels():
    head = RetinaNetHead(num_classes=3, num_anchors=9, channels=8, num_convs=2)
    pyramid = {"P3": np.zeros((2, 8, 8, 8), "float32"), "P4": np.zeros((2, 4, 4, 8), "float32")}
    cls, box = head(pyramid)
    assert tuple(cls["P3"].shape) == (2, 8 * 8 * 9, 3)
    assert tuple(box["P4"].shape) == (2, 4 * 4 * 9, 4)
    # 2 towers x 2 convs + 2 outputs, one set of weights for every level.
    assert len(head.trainable_weights) == 2 * (2 * 2 + 2)


def test_prior_probability_bias_on_the_class_output_only():
    head = RetinaNetHead(num_classes=2, num_anchors=1, channels=4, num_convs=1, prior_probability=0.05)
    cls, box = head({"P3": np.zeros((1, 2, 2, 4), "float32")})
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head.cls_logits.bias),
                               -math.log(0.95 / 0.05), rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head.box_deltas.bias), 0.0)
    # Zero features: every class probability equals the prior.
    probs = 1 / (1 + np.exp(-keras.ops.convert_to_numpy(cls["P3"])))
    np.testing.assert_allclose(probs, 0.05, rtol=1e-5)


def test_group_norm_and_config_round_trip():
    head = RetinaNetHead(num_classes=5, num_anchors=3, channels=16, num_convs=3, norm="group")
    clone = RetinaNetHead.from_config(head.get_config())
    assert len(clone.cls_convs) == 3 and len(clone.cls_norms) == 3
    assert isinstance(clone.cls_norms[0], keras.layers.GroupNormalization)
    assert clone.cls_logits.filters == 3 * 5 and clone.box_deltas.filters == 3 * 4
    with pytest.raises(ValueError, match="norm must be"):
        RetinaNetHead(num_classes=2, norm="layer")


def test_rpn_head_parameter_count_matches_detectron2():
    head = RPNHead(num_anchors=3, channels=256)
    head.build({"P2": (None, None, None, 256)})
    # 3x3 conv 9*256*256 + 256; objectness 256*3 + 3; deltas 256*12 + 12.
    assert head.count_params() == 9 * 65536 + 256 + 771 + 3084 == 593_935


def test_rpn_head_conv_depth_two_by_count_and_config():
    head = RPNHead(num_anchors=3, channels=256, conv_depth=2)
    head.build({"P2": (None, None, None, 256)})
    assert head.count_params() == 593_935 + 9 * 65536 + 256  # torchvision's v2 RPN head: one more 3x3 conv
    clone = RPNHead.from_config(head.get_config())
    assert clone.conv_depth == 2 and [c.name for c in [clone.conv] + clone.more_convs] == ["conv", "conv2"]
    with pytest.raises(ValueError, match=r"conv_depth must be >= 1, received 0"):
        RPNHead(conv_depth=0)


def test_rpn_head_second_conv_is_applied():
    head = RPNHead(num_anchors=1, channels=1, conv_depth=2)
    head.build({"P2": (None, None, None, 1)})
    for conv, scale in ((head.conv, 2.0), (head.more_convs[0], 3.0)):  # centre taps: x -> 2x -> 6x
        kernel = np.zeros((3, 3, 1, 1), "float32")
        kernel[1, 1] = scale
        conv.kernel.assign(kernel)
    head.objectness.kernel.assign(np.ones((1, 1, 1, 1), "float32"))
    objectness, _ = head({"P2": np.full((1, 2, 2, 1), 0.5, "float32")})
    np.testing.assert_allclose(np.asarray(objectness["P2"]), 3.0)  # 0.5 * 2 * 3


def test_group_norm_epsilon_reaches_the_towers():
    head = RetinaNetHead(num_classes=2, num_anchors=1, channels=32, num_convs=2, norm="group", norm_epsilon=1e-5)
    clone = RetinaNetHead.from_config(head.get_config())
    assert clone.norm_epsilon == 1e-5 and {n.epsilon for n in clone.cls_norms + clone.box_norms} == {1e-5}
