"""tf.data input pipeline: detection elements -> fixed-shape training batches.

Input elements are dicts ``{"image": uint8 [H, W, 3], "image_id": int64 [],
"boxes": float32 [n, 4] xyxy absolute pixels, "labels": int32 [n]}`` (the
format of ``fpn_keras.data.synthetic.load``). All functions use tf ops and
work inside ``tf.data`` (graph mode).
"""

import tensorflow as tf


def _output_hw(output_size, stride):
    try:
        height, width = (int(s) for s in output_size)
    except (TypeError, ValueError):
        raise ValueError(f"output_size must be (height, width), got {output_size!r}") from None
    if height <= 0 or width <= 0 or height % stride or width % stride:
        raise ValueError(
            f"output_size must be positive multiples of stride={stride}, got {output_size!r}"
        )
    return height, width


def resize_and_pad(image, boxes, output_size, stride=128):
    """Resize keeping aspect ratio to fit ``output_size``, pad bottom/right with zeros.

    Args:
        image: [h, w, 3] image (any numeric dtype).
        boxes: float [n, 4] xyxy absolute pixels of ``image``.
        output_size: (height, width), each a multiple of ``stride``.

    Returns:
        (image float32 [height, width, 3] in 0..255, boxes float32 [n, 4]
        xyxy scaled by the same factor, scale float32 scalar).
    """
    out_h, out_w = _output_hw(output_size, stride)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.minimum(out_h / shape[0], out_w / shape[1])
    new_h = tf.minimum(tf.cast(tf.round(shape[0] * scale), tf.int32), out_h)
    new_w = tf.minimum(tf.cast(tf.round(shape[1] * scale), tf.int32), out_w)
    resized = tf.image.resize(tf.cast(image, tf.float32), tf.stack([new_h, new_w]))
    resized = tf.clip_by_value(resized, 0.0, 255.0)
    padded = tf.image.pad_to_bounding_box(resized, 0, 0, out_h, out_w)
    padded = tf.ensure_shape(padded, [out_h, out_w, 3])
    boxes = tf.cast(boxes, tf.float32) * scale
    return padded, boxes, scale


def random_horizontal_flip(image, boxes, seed=None):
    """With probability 0.5 flip ``image`` [H, W, C] and xyxy ``boxes`` [n, 4] left-right.

    A flipped box is (W - x_max, y_min, W - x_min, y_max). Returns (image, boxes).
    """
    boxes = tf.cast(boxes, tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)

    def flip():
        x_min, y_min, x_max, y_max = tf.unstack(boxes, axis=-1)
        flipped = tf.stack([width - x_max, y_min, width - x_min, y_max], axis=-1)
        return tf.reverse(image, axis=[1]), flipped

    do_flip = tf.random.uniform([], seed=seed) < 0.5
    return tf.cond(do_flip, flip, lambda: (image, boxes))


def clip_and_filter(boxes, labels, height, width, min_size=1.0):
    """Clip xyxy ``boxes`` [n, 4] to the image; drop those narrower or shorter than ``min_size``.

    Returns (boxes float32 [k, 4], labels [k]) with k <= n.
    """
    boxes = tf.cast(boxes, tf.float32)
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    x_min, y_min, x_max, y_max = tf.unstack(boxes, axis=-1)
    x_min = tf.clip_by_value(x_min, 0.0, width)
    x_max = tf.clip_by_value(x_max, 0.0, width)
    y_min = tf.clip_by_value(y_min, 0.0, height)
    y_max = tf.clip_by_value(y_max, 0.0, height)
    clipped = tf.stack([x_min, y_min, x_max, y_max], axis=-1)
    keep = tf.logical_and(x_max - x_min >= min_size, y_max - y_min >= min_size)
    return tf.boolean_mask(clipped, keep), tf.boolean_mask(labels, keep)


def _decode(element):
    return {
        "image": tf.cast(element["image"], tf.uint8),
        "image_id": tf.cast(element["image_id"], tf.int64),
        "boxes": tf.reshape(tf.cast(element["boxes"], tf.float32), [-1, 4]),
        "labels": tf.cast(element["labels"], tf.int32),
    }


def prepare(
    dataset,
    batch_size,
    image_size=(128, 128),
    training=False,
    max_boxes=100,
    shuffle_buffer=1000,
    seed=None,
    cache=False,
    drop_remainder=None,
):
    """Turn a dataset of detection elements into batches for ``FPNDetector.fit``.

    Training adds shuffling and random horizontal flips (applied before the
    resize, so padding stays bottom/right); ``drop_remainder`` defaults to
    ``training``. ``cache=True`` caches the decoded elements.

    Returns:
        ``tf.data.Dataset`` of ``(images float32 [B, H, W, 3] in 0..255,
        {"boxes": float32 [B, max_boxes, 4] xyxy padded with -1,
        "labels": int32 [B, max_boxes] padded with -1,
        "image_id": int64 [B], "image_scale": float32 [B]})``, (H, W) = image_size
        (multiples of 128, see ``resize_and_pad``).
    """
    height, width = _output_hw(image_size, 128)
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    if int(max_boxes) <= 0:
        raise ValueError(f"max_boxes must be positive, got {max_boxes!r}")
    if drop_remainder is None:
        drop_remainder = bool(training)
    deterministic = True if seed is not None else None
    autotune = tf.data.AUTOTUNE

    dataset = dataset.map(_decode, num_parallel_calls=autotune, deterministic=deterministic)
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def transform(element):
        image, boxes = element["image"], element["boxes"]
        if training:
            image, boxes = random_horizontal_flip(image, boxes, seed=seed)
        image, boxes, scale = resize_and_pad(image, boxes, (height, width))
        boxes, labels = clip_and_filter(boxes, element["labels"], height, width)
        targets = {
            "boxes": boxes[:max_boxes],
            "labels": labels[:max_boxes],
            "image_id": element["image_id"],
            "image_scale": scale,
        }
        return image, targets

    dataset = dataset.map(transform, num_parallel_calls=autotune, deterministic=deterministic)
    dataset = dataset.padded_batch(
        int(batch_size),
        padded_shapes=(
            [height, width, 3],
            {"boxes": [max_boxes, 4], "labels": [max_boxes], "image_id": [], "image_scale": []},
        ),
        padding_values=(
            tf.constant(0.0, tf.float32),
            {
                "boxes": tf.constant(-1.0, tf.float32),
                "labels": tf.constant(-1, tf.int32),
                "image_id": tf.constant(0, tf.int64),
                "image_scale": tf.constant(0.0, tf.float32),
            },
        ),
        drop_remainder=drop_remainder,
    )
    return dataset.prefetch(autotune)
