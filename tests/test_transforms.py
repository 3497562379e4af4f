import numpy as np
import pytest
import tensorflow as tf

from fpn_keras.data import transforms
from fpn_keras.data.transforms import Augment

SEED = tf.constant([3, 4], tf.int64)


def test_horizontal_flip_hand_computed():
    image = np.tile(np.arange(100, dtype=np.uint8)[None, :, None], (20, 1, 3))
    out, boxes = transforms.horizontal_flip(tf.constant(image), tf.constant([[10.0, 2.0, 30.0, 12.0]]))
    np.testing.assert_array_equal(out.numpy(), image[:, ::-1])
    np.testing.assert_array_equal(boxes.numpy(), [[70.0, 2.0, 90.0, 12.0]])


def test_crop_hand_computed_clip_and_drop():
    image = np.arange(100 * 100 * 3, dtype=np.int32).reshape(100, 100, 3)
    boxes = tf.constant([
        [10.0, 10.0, 30.0, 30.0],  # -> [5, -10, 25, 10] -> clipped [5, 0, 25, 10]: keeps 1/2: kept
        [0.0, 60.0, 20.0, 90.0],  # -> [-5, 40, 15, 70] -> [0, 40, 15, 50]: keeps 1/4: dropped
        [70.0, 25.0, 80.0, 35.0],  # -> [65, 5, 75, 15] -> [60, 5, 60, 15]: empty: dropped
        [20.0, 30.0, 40.0, 50.0],  # -> [15, 10, 35, 30]: inside
    ])
    out, out_boxes, keep = transforms.crop(tf.constant(image), boxes, top=20, left=5, height=50, width=60)
    np.testing.assert_array_equal(out.numpy(), image[20:70, 5:65])
    np.testing.assert_array_equal(
        out_boxes.numpy(), [[5, 0, 25, 10], [0, 40, 15, 50], [60, 5, 60, 15], [15, 10, 35, 30]]
    )
    np.testing.assert_array_equal(keep.numpy(), [True, False, False, True])
    _, _, keep = transforms.crop(tf.constant(image), boxes, 20, 5, 50, 60, min_area_fraction=0.25)
    np.testing.assert_array_equal(keep.numpy(), [True, True, False, True])
    # the window is clipped to the image
    out, _, _ = transforms.crop(tf.constant(image), boxes, top=80, left=90, height=50, width=60)
    assert out.shape == (20, 10, 3)


def test_short_side_scale_and_resize():
    assert transforms.short_side_scale(300, 600, 600).numpy() == pytest.approx(2.0)
    assert transforms.short_side_scale(300, 600, 600, max_size=1000).numpy() == pytest.approx(1000 / 600)
    out, boxes = transforms.resize(tf.zeros([10, 20, 3], tf.uint8), tf.constant([[2.0, 4.0, 6.0, 8.0]]), 1.5)
    assert out.shape == (15, 30, 3) and out.dtype == tf.float32
    np.testing.assert_allclose(boxes.numpy(), [[3.0, 6.0, 9.0, 12.0]])
    scales = {
        round(float(transforms.random_short_side_scale(50, 100, (25, 50, 100), seed=tf.constant([i, 0]))), 4)
        for i in range(40)
    }
    assert scales == {0.5, 1.0, 2.0}


def test_random_scale_crop():
    image = tf.fill([64, 64, 3], tf.constant(7, tf.uint8))
    boxes = tf.constant([[0.0, 0.0, 64.0, 64.0], [10.0, 10.0, 20.0, 20.0]])
    # factor 0.5: 32x32 image, nothing cropped, boxes halved
    out, out_boxes, keep, scale = transforms.random_scale_crop(image, boxes, (64, 64), (0.5, 0.5), seed=SEED)
    assert out.shape == (32, 32, 3) and float(scale) == 0.5
    np.testing.assert_allclose(out_boxes.numpy(), [[0, 0, 32, 32], [5, 5, 10, 10]])
    assert keep.numpy().tolist() == [True, True]
    # factor 2: 128x128 image, a 64x64 window; the full-image box keeps 1/4 of its area: dropped
    for i in range(5):
        seed = tf.constant([i, 1], tf.int64)
        out, out_boxes, keep, scale = transforms.random_scale_crop(image, boxes, (64, 64), (2.0, 2.0), seed=seed)
        assert out.shape == (64, 64, 3) and float(scale) == 2.0
        assert not keep.numpy()[0]
        assert np.all(out_boxes.numpy() >= 0) and np.all(out_boxes.numpy() <= 64)
        again = transforms.random_scale_crop(image, boxes, (64, 64), (2.0, 2.0), seed=seed)
        np.testing.assert_array_equal(again[1].numpy(), out_boxes.numpy())  # stateless: reproducible


def test_color_jitter():
    gray = tf.fill([4, 5, 3], 100.0)
    # contrast and saturation leave a flat gray image alone
    out = transforms.color_jitter(gray, contrast=0.5, saturation=0.9, seed=SEED)
    np.testing.assert_allclose(out.numpy(), 100.0, atol=1e-3)
    # brightness shifts every pixel by the same amount within +-0.1 * 255
    out = transforms.color_jitter(gray, brightness=0.1, seed=SEED).numpy()
    assert np.ptp(out) < 1e-3 and abs(out[0, 0, 0] - 100.0) <= 25.5 + 1e-3
    image = tf.random.stateless_uniform([8, 8, 3], seed=[1, 2], maxval=255.0)
    a = transforms.color_jitter(image, 0.2, 0.4, 0.4, seed=SEED)
    b = transforms.color_jitter(image, 0.2, 0.4, 0.4, seed=SEED)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert a.numpy().min() >= 0.0 and a.numpy().max() <= 255.0


def test_augment_config():
    assert Augment.from_config(None) == Augment()
    assert Augment.from_config(False).flip is False
    assert Augment.from_config({"short_sides": [96, 128]}).short_sides == (96, 128)
    with pytest.raises(ValueError, match="bogus"):
        Augment.from_config({"bogus": 1})
    with pytest.raises(ValueError, match="scale_range"):
        Augment(scale_range=(2.0, 1.0))


def test_random_horizontal_flip_known_box():
    image = np.tile(np.arange(100, dtype=np.uint8)[None, :, None], (20, 1, 3))
    boxes = np.array([[10.0, 2.0, 30.0, 12.0]], np.float32)
    outcomes = set()
    for i in range(30):
        out, out_boxes = transforms.random_horizontal_flip(tf.constant(image), boxes, seed=None)
        if out.numpy()[0, 0, 0] == 99:  # flipped
            np.testing.assert_array_equal(out.numpy(), image[:, ::-1])
            np.testing.assert_array_equal(out_boxes.numpy(), [[70.0, 2.0, 90.0, 12.0]])
            outcomes.add("flipped")
        else:
            np.testing.assert_array_equal(out.numpy(), image)
            np.testing.assert_array_equal(out_boxes.numpy(), boxes)
            outcomes.add("kept")
    assert outcomes == {"flipped", "kept"}
