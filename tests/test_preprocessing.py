"""fpn_keras.preprocessing: the resize + pad contract, and the tf.data pipeline agrees."""

import numpy as np
import tensorflow as tf

from fpn_keras.data import pipeline
from fpn_keras.preprocessing import fit_to_canvas


def test_fit_to_canvas_keeps_aspect_and_pads_bottom_right():
    image = np.full((50, 100, 3), 200, np.uint8)
    canvas, scale, size = fit_to_canvas(image, (64, 64))
    # scale = min(64 / 50, 64 / 100) = 0.64 -> 32 x 64 pixels, then zeros
    assert canvas.shape == (64, 64, 3) and float(scale) == np.float32(0.64)
    np.testing.assert_array_equal(np.asarray(size), [50, 100])
    assert np.all(np.asarray(canvas)[:32] == 200) and np.all(np.asarray(canvas)[32:] == 0)


def test_the_training_pipeline_resizes_to_the_same_pixels():
    rng = np.random.default_rng(0)
    for shape in ((50, 100), (97, 61), (128, 128), (20, 300)):
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        ours, scale, _ = fit_to_canvas(image, (96, 128))
        theirs, _, their_scale = pipeline.resize_and_pad(tf.constant(image), tf.zeros([0, 4]), (96, 128), stride=32)
        np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-3, err_msg=str(shape))
        assert float(scale) == float(their_scale)
