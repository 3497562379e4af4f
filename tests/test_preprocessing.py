"""fpn_keras.preprocessing: the resize + pad contract, and the tf.data pipeline agrees."""

import numpy as np
import pytest
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


def test_non_finite_pixels_are_an_error_naming_the_image_and_the_count(make_detector):
    from fpn_keras.preprocessing import check_finite_images

    images = np.zeros((3, 64, 64, 3), "float32")
    images[1, 0, 0, 0] = np.inf  # one inf pixel value
    images[2, :10, :10, :] = np.nan  # a 10x10 NaN patch: 300 values
    with pytest.raises(ValueError, match=r"image 1 of the batch: 1 values, image 2 of the batch: 300 values"):
        check_finite_images(images)
    assert check_finite_images(np.zeros((1, 4, 4, 3), "uint8")) is not None  # integers cannot be NaN

    model = make_detector()
    model.image_size = (64, 64)
    with pytest.raises(Exception, match=r"NaN or Inf pixel values") as error:
        model.predict(images, verbose=0)  # a graph assertion inside predict
    assert "300" in str(error.value)
    assert model.predict(np.zeros((2, 64, 64, 3), "float32"), verbose=0)["boxes"].shape[0] == 2
    with pytest.raises(ValueError, match=r"image 1: 300 values"):
        model.predict_images([np.zeros((40, 50, 3), "float32"), images[2]])
    with pytest.raises(ValueError, match=r"image 0: expected \[height, width, 3\] RGB, received shape \(40, 50\)"):
        model.predict_images([np.zeros((40, 50), "float32")])
