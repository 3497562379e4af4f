"""The RPN head (fpn_keras.models.rpn): losses and proposals on a 2-image, 3-box case
small enough to check on paper."""

import math

import numpy as np

from fpn_keras.models.backbones import small_resnet
from fpn_keras.models.detector import FPNDetector
from fpn_keras.models.rpn import RPN

# Three anchors on one level, shared by both images:
#   a0 = [0, 0, 10, 10], a1 = [20, 20, 30, 30], a2 = [0, 0, 10, 22].
# Image 0: one object [0, 0, 10, 10] (class 5; the RPN sees only "object").
#   a0 IoU 1 -> positive; a1 IoU 0 -> negative; a2 IoU 100/220 = 0.45 -> ignored (0.3..0.7).
# Image 1: objects [20, 20, 30, 32] (class 0) and [0, 0, 10, 22] (class 1).
#   a1 IoU 100/120 = 0.83 with the first -> positive; a2 IoU 1 with the second -> positive;
#   a0 IoU 0.45 with the second -> ignored. No negative left to sample.
ANCHORS = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 22]], "float32")
GT_BOXES = np.array([[[0, 0, 10, 10], [-1, -1, -1, -1]],
                     [[20, 20, 30, 32], [0, 0, 10, 22]]], "float32")
GT_LABELS = np.array([[5, -1], [0, 1]], "int32")


def _raw(objectness, deltas):
    return {"objectness": {"P2": np.asarray(objectness, "float32")},
            "deltas": {"P2": np.asarray(deltas, "float32")},
            "anchors": {"P2": ANCHORS}}


def _bce(logit, target):
    return math.log1p(math.exp(-logit)) if target else math.log1p(math.exp(logit))


def test_losses_by_hand_sampling_normaliser_and_ignored_anchors():
    # 4 anchors per image are sampled: every positive and negative here (3 and 2 of 4).
    rpn = RPN(min_level=2, max_level=2, batch_size_per_image=4, positive_fraction=0.5,
              smooth_l1_beta=0.0, seed=0)
    objectness = [[2.0, -1.0, 5.0],  # a2 is ignored: its logit 5 adds nothing
                  [3.0, 0.0, 0.0]]  # a0 is ignored
    deltas = np.zeros((2, 3, 4), "float32")
    deltas[0, 0] = [0.5, 0, 0, 0]  # positive a0 of image 0, exact target 0: L1 0.5
    deltas[0, 1] = 9.0  # a negative: no box loss
    deltas[1, 2] = [0, 0, 0, -0.2]  # positive a2 of image 1, exact target 0: L1 0.2
    # a1 of image 1 -> [20, 20, 30, 32]: targets dx 0, dy (26 - 25) / 10 = 0.1, dw 0,
    # dh ln(12 / 10); with zero deltas L1 = 0.1 + ln 1.2.
    losses = rpn.compute_losses(_raw(objectness, deltas), GT_BOXES, GT_LABELS)
    normaliser = 4 * 2  # batch_size_per_image x images
    cls = _bce(2.0, 1) + _bce(-1.0, 0) + _bce(0.0, 1) + _bce(0.0, 1)
    np.testing.assert_allclose(float(losses["rpn_cls_loss"]), cls / normaliser, rtol=1e-5)
    box = 0.5 + 0.2 + 0.1 + math.log(1.2)
    np.testing.assert_allclose(float(losses["rpn_box_loss"]), box / normaliser, rtol=1e-5)


def test_proposals_by_hand_decode_rank_nms_and_pad():
    rpn = RPN(min_level=2, max_level=2, post_nms_topk_test=4, nms_threshold=0.7)
    objectness = [[2.0, -1.0, 5.0], [3.0, 0.0, 1.0]]
    deltas = np.zeros((2, 3, 4), "float32")
    deltas[0, 0] = [0.1, 0, 0, 0]  # a0 of image 0 moves right by 0.1 x 10 = 1 px
    # a2 of image 1 decodes onto a0 (centre y 11 -> 5, height 22 -> 10): IoU 1 with the
    # better-scored a0, so NMS removes it.
    deltas[1, 2] = [0, (5 - 11) / 22, 0, math.log(10 / 22)]
    out = rpn.detect(_raw(objectness, deltas), (64, 64))
    # Image 0: a2 (5), a0 (2), a1 (-1); a2 and a0 overlap 0.45 < 0.7: all kept, one pad row.
    np.testing.assert_allclose(out["boxes"][0], [[0, 0, 10, 22], [1, 0, 11, 10], [20, 20, 30, 30],
                                                 [-1, -1, -1, -1]], atol=1e-4)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    np.testing.assert_allclose(out["scores"][0], [sigmoid(5), sigmoid(2), sigmoid(-1), 0], rtol=1e-5)
    np.testing.assert_array_equal(out["labels"][0], [0, 0, 0, -1])
    np.testing.assert_allclose(out["boxes"][1, :2], [[0, 0, 10, 10], [20, 20, 30, 30]], atol=1e-4)
    np.testing.assert_allclose(out["scores"][1], [sigmoid(3), sigmoid(0), 0, 0], rtol=1e-5)
    np.testing.assert_array_equal(out["num_detections"], [3, 2])


def test_rpn_head_alone_gives_class_agnostic_proposals():
    model = FPNDetector(head="rpn", backbone=small_resnet((8, 16, 32, 64)), fpn_channels=16)
    out = model.predict(np.zeros((1, 64, 64, 3), "float32"), verbose=0)
    assert model.class_names == ["object"]
    assert out["boxes"].shape == (1, 1000, 4)
    assert set(np.unique(out["labels"])) <= {-1, 0}
    assert model.evaluation_settings == {"max_dets": (10, 100, 1000), "class_agnostic": True}


def test_conv_depth_reaches_the_head_and_round_trips():
    rpn = RPN(conv_depth=2)
    clone = RPN.from_config(rpn.get_config())
    assert clone.head.conv_depth == 2 and len(clone.head.more_convs) == 1
    assert RPN().head.conv_depth == 1 and RPN().head.more_convs == []
