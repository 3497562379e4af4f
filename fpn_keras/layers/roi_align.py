"""Multi-level RoIAlign (Mask R-CNN, He et al. 2017; "aligned" half-pixel version).

Shapes: B batch, R RoIs per image, S = pooled size, C channels.

Each RoI is pooled from one pyramid level, chosen by Eq. (1) of the FPN paper:
k = floor(k0 + log2(sqrt(w * h) / 224)), k0 = 4, clamped to [min_level, max_level].
In that level, the RoI is split into S x S bins; each bin averages
sampling_ratio^2 bilinear samples at regular points. With aligned=True the RoI
is shifted by -0.5 pixel (detectron2's ROIAlign(aligned=True)). Samples more than
one pixel outside the map are 0; others are clamped to the border (as detectron2).

The generic path is written with gathers in `keras.ops`, so it runs on every
backend and converts to TFLite builtins; it materialises the 4 neighbours of
every sample. Under TensorFlow the same samples come from the
`CropAndResize` kernel (one call per level, ~4x faster forward and backward
on CPU): each level is edge-padded by one pixel so that the kernel's
"outside [0, H-1] is 0" rule becomes RoIAlign's "clamp within one pixel,
0 beyond"; the sample points are identical, so both paths agree to float
rounding.
"""

import keras
from keras import ops


def assign_levels(boxes, min_level=2, max_level=5, canonical_level=4, canonical_size=224.0,
                  epsilon=None):
    """FPN level of each `xyxy` box [..., 4] -> int32 [...] (Eq. 1 of the FPN paper).

    epsilon None: floor(k0 + log2(s / s0 + 1e-8)) (the 1e-8 keeps log2 finite for empty
    boxes); a float: torchvision's LevelMapper, floor(k0 + log2(s / s0) + epsilon) (1e-6;
    an empty box gets -inf, clamped to min_level). s = sqrt(w * h), s0 = canonical_size.
    """
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    sizes = ops.sqrt(ops.maximum(widths * heights, 0.0))
    if epsilon is None:
        levels = ops.floor(canonical_level + ops.log2(sizes / canonical_size + 1e-8))
    else:
        levels = ops.floor(canonical_level + ops.log2(sizes / canonical_size) + epsilon)
    return ops.cast(ops.clip(levels, min_level, max_level), "int32")


def level_strides(min_level, max_level, strides=None):
    """The stride of each level min_level..max_level: `strides` checked, or 2**l."""
    if strides is None:
        return tuple(2.0 ** l for l in range(min_level, max_level + 1))
    strides = tuple(float(s) for s in strides)
    if len(strides) != max_level - min_level + 1 or min(strides) <= 0:
        raise ValueError(f"strides must give one positive stride per level P{min_level}-P{max_level}, "
                         f"received {strides!r}")
    return strides


def _bilinear_terms(coords, limit):
    """Bilinear terms of sample coordinates [B, R, n] along one axis of size limit [B, R, 1]:
    (low, high int32, w_low, w_high float), 0 for samples more than one pixel outside."""
    outside = (coords < -1.0) | (coords > limit)
    coords = ops.maximum(coords, 0.0)
    low = ops.floor(coords)
    at_edge = low >= limit - 1.0
    low = ops.where(at_edge, limit - 1.0, low)
    high = ops.where(at_edge, limit - 1.0, low + 1.0)
    coords = ops.where(at_edge, low, coords)
    frac = coords - low
    inside = ops.cast(ops.logical_not(outside), "float32")
    return (ops.cast(low, "int32"), ops.cast(high, "int32"),
            (1.0 - frac) * inside, frac * inside)


def _axis_samples(start, bin_size, pooled_size, sampling_ratio, limit):
    """Sample coordinates along one axis and their bilinear terms.

    start, bin_size: [B, R]; limit: [B, R] map size along this axis.
    Returns (low, high int32, w_low, w_high float) each [B, R, S * sr].
    """
    steps = ops.arange(pooled_size * sampling_ratio, dtype="float32")
    coords = start[..., None] + (steps + 0.5) * (bin_size[..., None] / sampling_ratio)
    return _bilinear_terms(coords, limit[..., None])


def _adaptive_axis_samples(start, bin_size, grid, index, pooled_size, limit):
    """Sample `index` of every bin along one axis when a bin of the RoI takes `grid` [B, R]
    samples (sampling_ratio 0): coordinates start + p * bin + (index + 0.5) * bin / grid,
    p = 0..S-1. Returns the bilinear terms [B, R, S], the weights times 1 / grid and 0
    where index >= grid."""
    bins = ops.arange(pooled_size, dtype="float32")
    count = ops.maximum(grid, 1.0)[..., None]
    coords = start[..., None] + bins * bin_size[..., None] + (index + 0.5) * bin_size[..., None] / count
    low, high, w_low, w_high = _bilinear_terms(coords, limit[..., None])
    used = ops.cast(index < grid, "float32")[..., None] / count
    return low, high, w_low * used, w_high * used


def multilevel_roi_align(features, boxes, min_level=2, max_level=5, pooled_size=7,
                         sampling_ratio=2, aligned=True, canonical_level=4, canonical_size=224.0,
                         implementation="auto", level_epsilon=None, max_sampling_ratio=4, strides=None):
    """Pools `xyxy` boxes [B, R, 4] (input pixels) from {"P2": [B, H2, W2, C], ...}.

    aligned=False: no half-pixel shift, RoIs at least 1x1 (torchvision's roi_align(aligned=False),
    what MultiScaleRoIAlign uses). level_epsilon: see `assign_levels`.
    strides: the pixels per cell of levels min_level..max_level (None: 2**l; torchvision's
    MobileNetV3 FPN pools from a level at stride 32 that we name P4: (32,)).
    sampling_ratio 0: adaptive, as torchvision / detectron2's roi_align(sampling_ratio=0)
    (detectron2's ROIAlignV2): a bin of a RoI h x w (in level pixels) averages
    ceil(h / S) x ceil(w / S) samples, at most max_sampling_ratio per axis (the static bound
    the shapes need; exact for RoIs up to S * max_sampling_ratio level pixels a side, fewer
    samples beyond). The generic path runs max_sampling_ratio^2 passes of S x S samples; the TF
    path groups the RoIs by grid and takes only the samples each needs.
    implementation: "auto" (TF kernel under the TF backend, else generic), "tf" or "generic".
    Returns [B, R, pooled_size, pooled_size, C].
    """
    if implementation == "auto":
        implementation = "tf" if keras.backend.backend() == "tensorflow" else "generic"
    if implementation not in ("tf", "generic"):
        raise ValueError(f"implementation must be 'auto', 'tf' or 'generic', received {implementation!r}")
    if implementation == "tf":
        return _roi_align_tensorflow(features, boxes, min_level, max_level, pooled_size,
                                     sampling_ratio, aligned, canonical_level, canonical_size, level_epsilon,
                                     max_sampling_ratio, strides)
    strides = level_strides(min_level, max_level, strides)
    names = [f"P{l}" for l in range(min_level, max_level + 1)]
    batch = ops.shape(boxes)[0]
    num_rois = boxes.shape[1]
    channels = features[names[0]].shape[-1]
    # All levels flattened into one table [B, sum(Hl * Wl), C]; a RoI indexes its level's part.
    flat, heights, widths, offsets = [], [], [], []
    offset = 0
    for name in names:
        h, w = features[name].shape[1], features[name].shape[2]
        flat.append(ops.reshape(features[name], (batch, h * w, channels)))
        heights.append(float(h))
        widths.append(float(w))
        offsets.append(offset)
        offset += h * w
    table = ops.concatenate(flat, axis=1)

    levels = assign_levels(boxes, min_level, max_level, canonical_level, canonical_size, level_epsilon)
    index = levels - min_level  # [B, R]
    scale = ops.take(ops.convert_to_tensor([1.0 / stride for stride in strides]), index)
    height = ops.take(ops.convert_to_tensor(heights), index)
    width = ops.take(ops.convert_to_tensor(widths), index)
    base = ops.take(ops.convert_to_tensor(offsets, "int32"), index)

    shift = 0.5 if aligned else 0.0
    x1 = boxes[..., 0] * scale - shift
    y1 = boxes[..., 1] * scale - shift
    x2 = boxes[..., 2] * scale - shift
    y2 = boxes[..., 3] * scale - shift
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # legacy RoIAlign forces RoIs to at least 1x1
        roi_w, roi_h = ops.maximum(roi_w, 1.0), ops.maximum(roi_h, 1.0)
    row_width = ops.cast(width, "int32")[..., None, None]
    base = base[..., None, None]
    if sampling_ratio == 0:
        return _adaptive_pool(table, base, row_width, (y1, x1), (roi_h, roi_w), (height, width),
                              pooled_size, max_sampling_ratio, (batch, num_rois, channels))
    y_lo, y_hi, wy_lo, wy_hi = _axis_samples(y1, roi_h / pooled_size, pooled_size, sampling_ratio, height)
    x_lo, x_hi, wx_lo, wx_hi = _axis_samples(x1, roi_w / pooled_size, pooled_size, sampling_ratio, width)

    n = pooled_size * sampling_ratio
    result = 0.0
    for ys, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
        for xs, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
            # [B, R, n, n] flat indices into the table.
            idx = base + ys[..., :, None] * row_width + xs[..., None, :]
            values = ops.take_along_axis(table, ops.reshape(idx, (batch, -1, 1)), axis=1)
            values = ops.reshape(values, (batch, num_rois, n, n, channels))
            result = result + values * (wy[..., :, None] * wx[..., None, :])[..., None]
    # Average the sampling_ratio x sampling_ratio samples of every bin, in two
    # steps of rank <= 4 (TFLite's MEAN kernels and XNNPACK take at most 4-D).
    rows = ops.reshape(result, (-1, sampling_ratio, n, channels))  # [B*R*S, sr, n, C]
    rows = ops.mean(rows, axis=1)  # [B*R*S, n, C]
    bins = ops.reshape(rows, (-1, pooled_size, sampling_ratio, channels))  # [B*R*S, S, sr, C]
    bins = ops.mean(bins, axis=2)  # [B*R*S, S, C]
    return ops.reshape(bins, (batch, num_rois, pooled_size, pooled_size, channels))


def _adaptive_pool(table, base, row_width, starts, sides, limits, pooled_size, max_sampling_ratio, shape):
    """sampling_ratio 0 (see `multilevel_roi_align`): for each sample index (i, j) of a bin,
    one pass gathering the 4 neighbours of S x S points, weighted 1 / (grid_y * grid_x) where
    i < grid_y and j < grid_x, else 0. Returns [B, R, S, S, C]."""
    batch, num_rois, channels = shape
    (y1, x1), (roi_h, roi_w), (height, width) = starts, sides, limits
    bin_h, bin_w = roi_h / pooled_size, roi_w / pooled_size
    # Samples per bin and axis: ceil(side / S) (0 for an empty RoI: output 0), at most the bound.
    grid_y = ops.minimum(ops.ceil(bin_h), float(max_sampling_ratio))
    grid_x = ops.minimum(ops.ceil(bin_w), float(max_sampling_ratio))
    x_samples = [_adaptive_axis_samples(x1, bin_w, grid_x, float(j), pooled_size, width)
                 for j in range(max_sampling_ratio)]
    result = 0.0
    for i in range(max_sampling_ratio):
        y_terms = _adaptive_axis_samples(y1, bin_h, grid_y, float(i), pooled_size, height)
        for x_terms in x_samples:
            for ys, wy in ((y_terms[0], y_terms[2]), (y_terms[1], y_terms[3])):
                for xs, wx in ((x_terms[0], x_terms[2]), (x_terms[1], x_terms[3])):
                    # [B, R, S, S] flat indices into the table.
                    idx = base + ys[..., :, None] * row_width + xs[..., None, :]
                    values = ops.take_along_axis(table, ops.reshape(idx, (batch, -1, 1)), axis=1)
                    values = ops.reshape(values, (batch, num_rois, pooled_size, pooled_size, channels))
                    result = result + values * (wy[..., :, None] * wx[..., None, :])[..., None]
    return result


def _crop_boxes(y1, x1, step_y, step_x, count, height, width):
    """CropAndResize boxes (on the map edge-padded by one pixel) whose count_y x count_x
    samples are y1 + k * step_y, x1 + l * step_x, k < count_y, l < count_x (level pixels);
    count: one int for both axes or (count_y, count_x)."""
    import tensorflow as tf

    count_y, count_x = count if isinstance(count, tuple) else (count, count)
    return tf.stack([(y1 + 1.0) / (height + 1.0), (x1 + 1.0) / (width + 1.0),
                     (y1 + (count_y - 1) * step_y + 1.0) / (height + 1.0),
                     (x1 + (count_x - 1) * step_x + 1.0) / (width + 1.0)], axis=-1)


def _adaptive_crops(padded, indices, starts, sides, limits, pooled_size, max_sampling_ratio, channels):
    """sampling_ratio 0 on one level (see `multilevel_roi_align`): the RoIs grouped by their
    grid (grid_y, grid_x) <= max_sampling_ratio, one CropAndResize of S * grid_y x S * grid_x
    samples (grid_y, grid_x per bin, bin / grid apart) and one average pool per group, so the
    work is the samples the RoIs need. padded: the level edge-padded by one pixel; starts,
    sides: (y1, x1), (roi_h, roi_w) [Rl] in level pixels. Returns [Rl, S, S, C]."""
    import tensorflow as tf

    (y1, x1), (roi_h, roi_w), (height, width) = starts, sides, limits
    bin_h, bin_w = roi_h / pooled_size, roi_w / pooled_size
    cap = max_sampling_ratio
    grid_y = tf.clip_by_value(tf.math.ceil(bin_h), 1.0, float(cap))
    grid_x = tf.clip_by_value(tf.math.ceil(bin_w), 1.0, float(cap))
    nonempty = tf.cast((bin_h > 0) & (bin_w > 0), tf.float32)  # an empty RoI has no samples: 0
    group = tf.cast((grid_y - 1.0) * cap + (grid_x - 1.0), tf.int32)
    positions = tf.dynamic_partition(tf.range(tf.shape(y1)[0]), group, cap * cap)
    pooled = []
    for index in range(cap * cap):
        gy, gx = index // cap + 1, index % cap + 1
        take = positions[index]
        step_y, step_x = tf.gather(bin_h, take) / gy, tf.gather(bin_w, take) / gx
        crop_boxes = _crop_boxes(tf.gather(y1, take) + 0.5 * step_y, tf.gather(x1, take) + 0.5 * step_x,
                                 step_y, step_x, (pooled_size * gy, pooled_size * gx), height, width)
        crops = tf.image.crop_and_resize(padded, crop_boxes, tf.gather(indices, take),
                                         [pooled_size * gy, pooled_size * gx])  # [Rg, S gy, S gx, C]
        pooled.append(tf.nn.avg_pool2d(crops, (gy, gx), (gy, gx), "VALID"))
    result = tf.dynamic_stitch(positions, pooled)  # [Rl, S, S, C]
    return tf.reshape(result, [-1, pooled_size, pooled_size, channels]) * nonempty[:, None, None, None]


def _roi_align_tensorflow(features, boxes, min_level, max_level, pooled_size, sampling_ratio,
                          aligned, canonical_level, canonical_size, level_epsilon=None, max_sampling_ratio=4,
                          strides=None):
    """TF's CropAndResize kernel, one call per level on that level's RoIs only
    (tf.dynamic_partition / dynamic_stitch): cropping every RoI from every level
    and masking cost 4x the work. sampling_ratio 0 (adaptive): `_adaptive_crops`, the
    level's RoIs grouped by their sample grid."""
    import tensorflow as tf

    strides = level_strides(min_level, max_level, strides)
    boxes = tf.cast(boxes, tf.float32)
    batch = tf.shape(boxes)[0]
    num_rois = boxes.shape[1]
    n = pooled_size * sampling_ratio
    num_levels = max_level - min_level + 1
    levels = assign_levels(boxes, min_level, max_level, canonical_level, canonical_size, level_epsilon)
    flat_boxes = tf.reshape(boxes, [-1, 4])
    box_indices = tf.repeat(tf.range(batch), num_rois)
    # positions[i]: which of the B * R RoIs go to level min_level + i.
    positions = tf.dynamic_partition(tf.range(tf.shape(flat_boxes)[0]),
                                     tf.cast(tf.reshape(levels, [-1]), tf.int32) - min_level, num_levels)
    shift = 0.5 if aligned else 0.0
    pooled = []
    for i, level in enumerate(range(min_level, max_level + 1)):
        feature = features[f"P{level}"]
        channels = feature.shape[-1]
        height = tf.cast(tf.shape(feature)[1], tf.float32)
        width = tf.cast(tf.shape(feature)[2], tf.float32)
        level_boxes = tf.gather(flat_boxes, positions[i])
        level_indices = tf.gather(box_indices, positions[i])
        x1, y1, x2, y2 = tf.unstack(level_boxes * (1.0 / strides[i]) - shift, axis=-1)
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = tf.maximum(roi_w, 1.0), tf.maximum(roi_h, 1.0)
        padded = tf.pad(tf.cast(feature, tf.float32), [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
        if sampling_ratio == 0:
            pooled.append(_adaptive_crops(padded, level_indices, (y1, x1), (roi_h, roi_w), (height, width),
                                          pooled_size, max_sampling_ratio, channels))
            continue
        # n samples per axis, first at y1 + 0.5 * roi_h / n, then roi_h / n apart.
        crop_boxes = _crop_boxes(y1 + 0.5 * roi_h / n, x1 + 0.5 * roi_w / n, roi_h / n, roi_w / n, n, height, width)
        crops = tf.image.crop_and_resize(padded, crop_boxes, level_indices, [n, n])  # [Rl, n, n, C]
        # Average the sampling_ratio^2 samples of each bin. avg_pool2d, not a
        # reduce_mean over a 6-D reshape: 30 vs 123 ms for 1000 RoIs x 256 channels.
        pooled.append(tf.nn.avg_pool2d(crops, sampling_ratio, sampling_ratio, "VALID"))
    pooled = tf.dynamic_stitch(positions, pooled)  # back in RoI order: [B * R, S, S, C]
    return tf.reshape(pooled, [batch, num_rois, pooled_size, pooled_size, channels])
