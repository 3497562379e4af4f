import math

import numpy as np
import pytest
from keras import ops

from fpn_keras.layers.roi_align import assign_levels, multilevel_roi_align


def reference_roi_align(feature, box, pooled_size, sampling_ratio, stride):
    """Aligned RoIAlign of one box on one map, in plain Python loops (detectron2 semantics);
    sampling_ratio an int, or (samples along y, along x) per bin."""
    grid_y, grid_x = sampling_ratio if isinstance(sampling_ratio, tuple) else (sampling_ratio,) * 2
    height, width, channels = feature.shape
    x1, y1, x2, y2 = [c / stride - 0.5 for c in box]
    bin_h, bin_w = (y2 - y1) / pooled_size, (x2 - x1) / pooled_size

    def bilinear(y, x):
        if y < -1.0 or y > height or x < -1.0 or x > width:
            return np.zeros(channels)
        y, x = max(y, 0.0), max(x, 0.0)
        y0, x0 = int(math.floor(y)), int(math.floor(x))
        if y0 >= height - 1:
            y0 = y1_ = height - 1
            y = float(y0)
        else:
            y1_ = y0 + 1
        if x0 >= width - 1:
            x0 = x1_ = width - 1
            x = float(x0)
        else:
            x1_ = x0 + 1
        ly, lx = y - y0, x - x0
        return ((1 - ly) * (1 - lx) * feature[y0, x0] + (1 - ly) * lx * feature[y0, x1_]
                + ly * (1 - lx) * feature[y1_, x0] + ly * lx * feature[y1_, x1_])

    out = np.zeros((pooled_size, pooled_size, channels))
    for i in range(pooled_size):
        for j in range(pooled_size):
            for iy in range(grid_y):
                for ix in range(grid_x):
                    y = y1 + i * bin_h + (iy + 0.5) * bin_h / grid_y
                    x = x1 + j * bin_w + (ix + 0.5) * bin_w / grid_x
                    out[i, j] += bilinear(y, x) / (grid_y * grid_x)
    return out


def test_level_assignment_eq1():
    sides = np.array([32, 112, 224, 448, 1000], "float32")
    boxes = np.stack([np.zeros(5), np.zeros(5), sides, sides], -1).astype("float32")
    assert ops.convert_to_numpy(assign_levels(boxes)).tolist() == [2, 3, 4, 5, 5]


@pytest.mark.parametrize("implementation", ["generic", "tf"])
def test_matches_numpy_reference_inside_across_border_and_subpixel(implementation):
    rng = np.random.default_rng(0)
    features = {f"P{l}": rng.normal(size=(2, 256 // 2**l, 256 // 2**l, 3)).astype("float32")
                for l in range(2, 6)}
    boxes = np.array([[
        [10.0, 12.0, 50.0, 40.0],      # inside, P2
        [-20.0, -8.0, 60.0, 30.0],     # crosses the top-left border
        [200.0, 180.0, 300.0, 270.0],  # crosses the bottom-right border
        [33.3, 44.4, 33.9, 44.6],      # sub-pixel box
        [0.0, 0.0, 256.0, 256.0],      # large: P4
        [5.0, 100.0, 250.0, 250.0],    # P4/P3
    ]] * 2, "float32")
    boxes[1] += 1.7
    got = ops.convert_to_numpy(multilevel_roi_align(features, boxes, 2, 5, pooled_size=7, sampling_ratio=2,
                                                    implementation=implementation))
    levels = ops.convert_to_numpy(assign_levels(boxes))
    assert got.shape == (2, 6, 7, 7, 3)
    for b in range(2):
        for r in range(6):
            level = int(levels[b, r])
            expected = reference_roi_align(features[f"P{level}"][b], boxes[b, r], 7, 2, 2.0**level)
            np.testing.assert_allclose(got[b, r], expected, atol=1e-4)


def test_tf_kernel_path_has_the_same_gradient_as_the_generic_path():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    features = {f"P{l}": tf.constant(rng.normal(size=(1, 128 // 2**l, 128 // 2**l, 2)).astype("float32"))
                for l in range(2, 6)}
    boxes = np.array([[[3.0, 4.0, 60.0, 50.0], [-10.0, 90.0, 40.0, 140.0], [20.0, 20.0, 120.0, 126.0]]],
                     "float32")
    grads = []
    for implementation in ("generic", "tf"):
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = multilevel_roi_align(features, boxes, implementation=implementation)
            loss = tf.reduce_sum(out * np.arange(out.shape[-1], dtype="float32"))
        grads.append(tape.gradient(loss, features))
    for name in features:
        np.testing.assert_allclose(grads[1][name].numpy(), grads[0][name].numpy(), atol=1e-4)


def test_constant_map_pools_to_the_constant_inside_the_image():
    features = {f"P{l}": np.full((1, 64 // 2**l, 64 // 2**l, 2), 3.0, "float32") for l in range(2, 6)}
    boxes = np.array([[[8.0, 8.0, 40.0, 30.0]]], "float32")
    got = ops.convert_to_numpy(multilevel_roi_align(features, boxes, pooled_size=4, sampling_ratio=2))
    np.testing.assert_allclose(got, 3.0, atol=1e-6)


@pytest.mark.parametrize("implementation", ["generic", "tf"])
def test_unaligned_roi_align_by_hand_on_a_4x4_map(implementation):
    # P2 (stride 4) holds f(y, x) = 4y + x: bilinear samples are exact, 4y + x at the sample.
    feature = (4.0 * np.arange(4)[:, None] + np.arange(4)[None, :]).astype("float32")[None, :, :, None]
    boxes = np.array([[[4.0, 4.0, 12.0, 12.0],     # P2 [1, 1, 3, 3]: 2x2 bins of 1 px
                       [4.0, 4.0, 5.0, 5.0]]], "float32")  # P2 [1, 1, 1.25, 1.25]: under 1 px

    def pool(aligned, pooled_size):
        return ops.convert_to_numpy(multilevel_roi_align(
            {"P2": feature}, boxes, 2, 2, pooled_size, 1, aligned, implementation=implementation))[0, ..., 0]

    # aligned=False (torchvision's MultiScaleRoIAlign): samples at bin centres 1.5, 2.5.
    np.testing.assert_allclose(pool(False, 2)[0], [[7.5, 8.5], [11.5, 12.5]], atol=1e-5)
    # aligned=True shifts by -0.5 px: samples at 1, 2.
    np.testing.assert_allclose(pool(True, 2)[0], [[5.0, 6.0], [9.0, 10.0]], atol=1e-5)
    # aligned=False makes the 0.25 px RoI 1 px (sample at 1.5, 1.5); aligned=True keeps it (0.625).
    np.testing.assert_allclose(pool(False, 1)[1], [[7.5]], atol=1e-5)
    np.testing.assert_allclose(pool(True, 1)[1], [[3.125]], atol=1e-5)


def test_level_epsilon_is_torchvisions_level_mapper():
    # torchvision: floor(4 + log2(s / 224) + 1e-6); ours by default log2(s / 224 + 1e-8).
    side = np.float32(223.99991)  # log2(s / 224) = -5.8e-7: within torchvision's 1e-6 of P4
    boxes = np.array([[0, 0, side, side], [0, 0, 0, 0], [0, 0, 112, 112], [0, 0, 2000, 2000]], "float32")
    assert ops.convert_to_numpy(assign_levels(boxes)).tolist() == [3, 2, 3, 5]
    assert ops.convert_to_numpy(assign_levels(boxes, epsilon=1e-6)).tolist() == [4, 2, 3, 5]


@pytest.mark.parametrize("implementation", ["generic", "tf"])
def test_strides_override_the_level_stride(implementation):
    # The 4x4 map f(y, x) = 4y + x named P2 but at stride 8 (torchvision's MobileNetV3 FPN pools
    # a stride-32 map we name P4): the box [8, 8, 24, 24] is cells [1, 1, 3, 3], bin centres 1.5, 2.5.
    feature = (4.0 * np.arange(4)[:, None] + np.arange(4)[None, :]).astype("float32")[None, :, :, None]
    boxes = np.array([[[8.0, 8.0, 24.0, 24.0]]], "float32")
    got = ops.convert_to_numpy(multilevel_roi_align({"P2": feature}, boxes, 2, 2, 2, 1, False,
                                                    implementation=implementation, strides=(8,)))
    np.testing.assert_allclose(got[0, 0, ..., 0], [[7.5, 8.5], [11.5, 12.5]], atol=1e-5)
    with pytest.raises(ValueError, match="one positive stride per level P2-P2"):
        multilevel_roi_align({"P2": feature}, boxes, 2, 2, 2, 1, False, implementation=implementation,
                             strides=(8, 16))


@pytest.mark.parametrize("implementation", ["generic", "tf"])
def test_adaptive_sampling_ratio_uses_ceil_of_the_bin_size_per_roi(implementation):
    # sampling_ratio 0 (detectron2's ROIAlignV2): a RoI 14 x 28 level pixels has bins of 2 x 4
    # -> 2 x 4 samples; 3.5 x 3.5 -> 1 x 1; 30 x 10 -> 5 x 2, over max_sampling_ratio 4: 4 x 2.
    rng = np.random.default_rng(3)
    features = {"P2": rng.normal(size=(1, 40, 40, 2)).astype("float32")}
    boxes = np.array([[[8.0, 10.0, 8.0 + 4 * 28, 10.0 + 4 * 14], [20.0, 20.0, 34.0, 34.0],
                       [4.0, 2.0, 44.0, 122.0]]], "float32")
    got = ops.convert_to_numpy(multilevel_roi_align(features, boxes, 2, 2, pooled_size=7, sampling_ratio=0,
                                                    implementation=implementation, max_sampling_ratio=4))
    feature = features["P2"][0]
    for r, grid in enumerate([(2, 4), (1, 1), (4, 2)]):
        np.testing.assert_allclose(got[0, r], reference_roi_align(feature, boxes[0, r], 7, grid, 4.0), atol=1e-4)
    # The third RoI's exact 5 x 2 grid differs from the capped 4 x 2: max_sampling_ratio matters.
    assert np.abs(got[0, 2] - reference_roi_align(feature, boxes[0, 2], 7, (5, 2), 4.0)).max() > 1e-3
