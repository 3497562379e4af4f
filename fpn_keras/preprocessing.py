"""The preprocessing contract: how an image of any size becomes the model's input.

The model runs on a fixed canvas of `image_size` (height, width), multiples of 32 (the
coarsest backbone stride). An image of h x w pixels is resized by
`scale = min(height / h, width / w)` (aspect ratio kept; new size rounded, at least 1
pixel), bilinearly, values clipped to 0..255, and zero-padded at the bottom/right to the
canvas. Boxes on the canvas map back to the image's pixels by dividing by `scale` and
clipping to (h, w) (`fpn_keras.postprocess.finalize_detections`).

A model converted from torchvision or detectron2 sets `short_side_resize=(S, L)`
(FPNDetector): `FPNDetector.predict_images` then resizes as those libraries do
(`short_side_batch`): scale = min(S / min(h, w), L / max(h, w)), size
floor(h * scale) x floor(w * scale) (torchvision's float64 arithmetic), pads a batch to
its largest image rounded up to a multiple of 32 with `pad_value` (the pixel mean, which
their normalisation makes 0), and clips each image's boxes to its own resized size
before NMS. The exports keep the fixed canvas and take the same scale, capped so the
image fits it.

`fit_to_canvas` (keras.ops, any backend, static image sizes) serves
`FPNDetector.predict_images`; `fpn_keras.data.pipeline.resize_and_pad` applies the same
contract in TF ops, where sizes are dynamic: the tf.data training/evaluation pipeline
(which also scales boxes and takes training scale jitter) and the SavedModel's
serving signatures (tests/test_preprocessing.py checks that both give the same pixels).
"""

import keras
import numpy as np
from keras import ops

NON_FINITE_INPUT = "fpn_keras: images contain NaN or Inf pixel values"


def _non_finite_message(counts, names=None):
    bad = [(i, int(c)) for i, c in enumerate(np.asarray(counts).reshape(-1)) if c]
    where = ", ".join(f"{names[i] if names else f'image {i} of the batch'}: {c} values" for i, c in bad)
    return (f"{NON_FINITE_INPUT} ({where}); a NaN/Inf input gives no detections, which would read as "
            "'no objects': fix or drop these images")


def _eager_tf():
    import tensorflow as tf

    return tf.executing_eagerly()


def check_finite_images(images, names=None):
    """Fails on NaN / Inf pixels in a float batch [B, H, W, 3], naming each bad image
    (`names`, else its index) and how many values are not finite; returns the images.

    Integer images cannot hold them and pass unchecked. Under TensorFlow the check is
    a graph assertion (it fires inside `predict`); under JAX a host callback.
    """
    dtype = keras.backend.standardize_dtype(images.dtype)
    if "float" not in dtype:
        return images
    backend = keras.backend.backend()
    if backend == "tensorflow" and not isinstance(images, np.ndarray) and not _eager_tf():
        import tensorflow as tf

        counts = tf.reduce_sum(tf.cast(~tf.math.is_finite(images), tf.int32), axis=[1, 2, 3])
        check = tf.debugging.Assert(tf.reduce_all(counts == 0), [
            NON_FINITE_INPUT + " (per image of the batch, the count of NaN/Inf values):", counts], summarize=64)
        with tf.control_dependencies([check]):
            return tf.identity(images)
    if backend == "jax" and not isinstance(images, np.ndarray):
        import jax

        def raise_if_bad(counts):
            if np.any(counts):
                raise ValueError(_non_finite_message(counts, names))

        jax.debug.callback(raise_if_bad, ops.sum(ops.cast(~ops.isfinite(images), "int32"), axis=(1, 2, 3)))
        return images
    counts = np.sum(~np.isfinite(np.asarray(images)), axis=(1, 2, 3))
    if counts.any():
        raise ValueError(_non_finite_message(counts, names))
    return images


def read_image(path):
    """An image file -> uint8 [h, w, 3] RGB (grayscale / RGBA converted); ValueError naming
    the file when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {path!r}: {error}") from None


def short_side_size(height, width, short_side, max_side):
    """torchvision's resize: scale = min(short_side / min(h, w), max_side / max(h, w)) in
    float64 -> (floor(h * scale), floor(w * scale)), each at least 1."""
    scale = min(short_side / min(height, width), max_side / max(height, width))
    return max(int(np.floor(height * scale)), 1), max(int(np.floor(width * scale)), 1)


def _pad_pixels(pad_value):
    pad = np.broadcast_to(np.asarray(pad_value, np.float32), (3,))
    return ops.convert_to_tensor(pad, "float32")


def short_side_batch(images, short_side, max_side, size_divisor=32, pad_value=0.0):
    """Images of any sizes -> one batch as torchvision's GeneralizedRCNNTransform makes it.

    images: a list of [h_i, w_i, 3] arrays (0..255). Each is resized bilinearly to
    `short_side_size`; the batch is padded bottom / right to its largest height and width,
    each rounded up to a multiple of `size_divisor`, with `pad_value` (pixel values, one or
    one per channel). Returns (batch float32 [B, H, W, 3], image_sizes int32 [B, 2] (each
    image's resized (h, w)), scales float32 [B, 2] (resized / original, per axis),
    original_sizes float32 [B, 2])."""
    sizes = [short_side_size(image.shape[0], image.shape[1], short_side, max_side) for image in images]
    height = -(-max(h for h, _ in sizes) // size_divisor) * size_divisor
    width = -(-max(w for _, w in sizes) // size_divisor) * size_divisor
    pad = _pad_pixels(pad_value)
    batch = []
    for image, (new_h, new_w) in zip(images, sizes):
        resized = ops.image.resize(ops.cast(image, "float32")[None], (new_h, new_w), interpolation="bilinear",
                                   antialias=False)[0]
        resized = ops.clip(resized, 0.0, 255.0) - pad
        batch.append(ops.pad(resized, [[0, height - new_h], [0, width - new_w], [0, 0]]) + pad)
    originals = np.array([image.shape[:2] for image in images], np.float32)
    resized_sizes = np.array(sizes, np.int32)
    return ops.stack(batch), resized_sizes, resized_sizes.astype(np.float32) / originals, originals


def fit_to_canvas(image, canvas, pad_value=0.0, scale=None):
    """image [h, w, 3] (any numeric dtype, 0..255), canvas (height, width) ->
    (float32 [height, width, 3], scale float32 [], original size float32 [2] (h, w)).

    pad_value: pixel value(s) of the padding. scale: a resize factor to use instead of
    the largest that fits (capped so that the image still fits)."""
    canvas_h, canvas_w = int(canvas[0]), int(canvas[1])
    shape = ops.shape(image)
    height = ops.cast(shape[0], "float32")
    width = ops.cast(shape[1], "float32")
    fit = ops.minimum(canvas_h / height, canvas_w / width)
    scale = fit if scale is None else ops.minimum(ops.cast(scale, "float32"), fit)
    new_h = ops.clip(ops.cast(ops.round(height * scale), "int32"), 1, canvas_h)
    new_w = ops.clip(ops.cast(ops.round(width * scale), "int32"), 1, canvas_w)
    resized = ops.image.resize(ops.cast(image, "float32")[None], (new_h, new_w), interpolation="bilinear",
                               antialias=False)[0]
    pad = _pad_pixels(pad_value)
    resized = ops.clip(resized, 0.0, 255.0) - pad
    padded = ops.pad(resized, [[0, canvas_h - new_h], [0, canvas_w - new_w], [0, 0]]) + pad
    return padded, scale, ops.stack([height, width])


__all__ = ["fit_to_canvas", "read_image", "short_side_batch", "short_side_size"]
