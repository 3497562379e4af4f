"""The shared norm constructor (fpn_keras.layers.norm)."""

import keras
import numpy as np
import pytest

from fpn_keras.layers.norm import norm_layer


def test_choices_groups_and_epsilon():
    assert norm_layer(None, 256, "n") is None
    group = norm_layer("group", 48, "n", epsilon=1e-5)
    assert isinstance(group, keras.layers.GroupNormalization) and group.groups == 16 and group.epsilon == 1e-5
    assert norm_layer("group", 256, "n").epsilon == 1e-3  # Keras' default kept when epsilon is None
    assert norm_layer("batch", 8, "n", epsilon=0.0).epsilon == 0.0
    with pytest.raises(ValueError, match="norm must be None, 'group' or 'batch', received 'layer'"):
        norm_layer("layer", 8, "n")


def test_batch_norm_at_inference_by_hand():
    norm = norm_layer("batch", 2, "n", epsilon=1e-5)
    norm.build((None, 2))
    norm.set_weights([np.array([2.0, 1.0]), np.array([0.5, 0.0]), np.array([1.0, -1.0]), np.array([4.0, 1.0])])
    x = np.array([[3.0, 1.0]], np.float32)
    # (x - mean) / sqrt(var + eps) * gamma + beta: (3 - 1) / 2 * 2 + 0.5 = 2.5; (1 + 1) / 1 * 1 = 2
    np.testing.assert_allclose(np.asarray(norm(x, training=False)), [[2.5, 2.0]], rtol=1e-5)


def test_group_norm_by_hand():
    norm = norm_layer("group", 2, "n", epsilon=0.0)  # 2 groups of one channel: over the pixels
    x = np.array([[[[1.0, 5.0]], [[3.0, 11.0]]]], np.float32)  # [1, 2, 1, 2]: channels (1, 3), (5, 11)
    y = np.asarray(norm(x))
    np.testing.assert_allclose(y[0, :, 0, 0], [-1.0, 1.0], atol=1e-5)  # mean 2, std 1
    np.testing.assert_allclose(y[0, :, 0, 1], [-1.0, 1.0], atol=1e-5)  # mean 8, std 3
