import math

import numpy as np
from keras import ops

from fpn_keras.losses import giou_loss, sigmoid_focal_loss, smooth_l1_loss


def test_focal_loss_hand_computed():
    labels = np.array([[1.0, 0.0, 1.0]], "float32")
    logits = np.array([[0.0, 0.0, 2.0]], "float32")
    p2 = 1 / (1 + math.exp(-2.0))
    expected = [
        0.25 * 0.5**2 * math.log(2),  # p_t = 0.5, alpha_t = 0.25
        0.75 * 0.5**2 * math.log(2),  # negative: alpha_t = 0.75
        0.25 * (1 - p2) ** 2 * -math.log(p2),
    ]
    got = ops.convert_to_numpy(sigmoid_focal_loss(labels, logits))
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)
    # gamma = 0, alpha = 0.5 is half the binary cross-entropy.
    half_bce = ops.convert_to_numpy(sigmoid_focal_loss(labels, logits, alpha=0.5, gamma=0.0))
    np.testing.assert_allclose(half_bce[0, 0], 0.5 * math.log(2), rtol=1e-5)


def test_focal_loss_is_finite_for_extreme_logits():
    got = ops.convert_to_numpy(sigmoid_focal_loss(np.array([1.0, 0.0]), np.array([-100.0, 100.0])))
    assert np.all(np.isfinite(got)) and np.all(got > 10)


def test_smooth_l1_and_giou():
    got = ops.convert_to_numpy(smooth_l1_loss(np.zeros(3), np.array([0.05, 0.5, -2.0]), beta=0.1))
    np.testing.assert_allclose(got, [0.5 * 0.05**2 / 0.1, 0.5 - 0.05, 2.0 - 0.05], rtol=1e-6)
    l1 = ops.convert_to_numpy(smooth_l1_loss(np.zeros(2), np.array([0.05, -2.0]), beta=0.0))
    np.testing.assert_allclose(l1, [0.05, 2.0], rtol=1e-6)
    loss = ops.convert_to_numpy(giou_loss(np.array([[0, 0, 10, 10.0]]), np.array([[0, 0, 10, 20.0]])))
    np.testing.assert_allclose(loss, [0.5], rtol=1e-6)  # IoU 100/200, enclosing = union
