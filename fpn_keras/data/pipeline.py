"""tf.data input pipeline: detection elements -> fixed-shape training batches.

Input elements are dicts ``{"image": uint8 [H, W, 3], "image_id": int64 [],
"boxes": float32 [n, 4] xyxy absolute pixels, "labels": int32 [n]}`` plus an
optional ``"ignore": bool [n]`` (COCO iscrowd / VOC difficult boxes), the
format of every ``fpn_keras.data`` loader. All functions use tf ops and work
inside ``tf.data`` (graph mode). Augmentations live in
``fpn_keras.data.transforms``.
"""

import tensorflow as tf

from fpn_keras.boxes.convert import check_format, from_xyxy
from fpn_keras.data import epochs, transforms


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


def _fit_scale(image, out_h, out_w):
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    return tf.minimum(out_h / shape[0], out_w / shape[1])


def _resize_within(image, boxes, scale, out_h, out_w, floor=False):
    """Resize by ``scale`` (size rounded, or with ``floor`` (a bool tensor) the floor of the
    float64 product, torchvision's rule for a short-side scale; clamped to the canvas) ->
    unpadded float32 image, boxes scaled."""
    product = tf.cast(tf.shape(image)[:2], tf.float64) * tf.cast(scale, tf.float64)
    size = tf.cast(tf.where(floor, tf.floor(product), tf.round(product)), tf.int32)
    new_h = tf.minimum(tf.maximum(size[0], 1), out_h)
    new_w = tf.minimum(tf.maximum(size[1], 1), out_w)
    resized = tf.image.resize(tf.cast(image, tf.float32), tf.stack([new_h, new_w]))
    resized = tf.clip_by_value(resized, 0.0, 255.0)
    return resized, tf.cast(boxes, tf.float32) * tf.cast(scale, tf.float32)


def _short_side_within(image, resize, out_h, out_w):
    """``resize`` = (short side, long-side cap): torchvision's scale (float64; its size the
    floor, as `fpn_keras.preprocessing.short_side_size`), or the canvas fit when the image
    would not fit -> (scale float64 [], floor bool [])."""
    shape = tf.shape(image)
    scale = transforms.short_side_scale(shape[0], shape[1], *resize, dtype=tf.float64)
    fit = tf.cast(_fit_scale(image, out_h, out_w), tf.float64)
    return tf.minimum(scale, fit), scale <= fit


def _pad(image, out_h, out_w, pad_value=0.0):
    pad = tf.cast(tf.broadcast_to(pad_value, [3]), tf.float32)
    padded = tf.image.pad_to_bounding_box(image - pad, 0, 0, out_h, out_w) + pad
    return tf.ensure_shape(padded, [out_h, out_w, 3])


def resize_and_pad(image, boxes, output_size, stride=128, scale=None, pad_value=0.0, resize=None):
    """Resize keeping aspect ratio to fit ``output_size``, pad bottom/right with
    ``pad_value`` (pixel values: one, or one per channel).

    Args:
        image: [h, w, 3] image (any numeric dtype).
        boxes: float [n, 4] xyxy absolute pixels of ``image``.
        output_size: (height, width), each a multiple of ``stride``.
        scale: optional resize factor (e.g. from ``transforms.short_side_scale``);
            it is capped so the image still fits ``output_size``. Default: the
            largest factor that fits.
        resize: optional (short side, long-side cap): torchvision's resize (float64
            scale, the size's floor), capped to fit (the preprocessing contract of a
            model with ``short_side_resize``).

    Returns:
        (image float32 [height, width, 3] in 0..255, boxes float32 [n, 4]
        xyxy scaled by the same factor, scale float32 scalar).
    """
    out_h, out_w = _output_hw(output_size, stride)
    floor = False
    if resize is not None:
        scale, floor = _short_side_within(image, resize, out_h, out_w)
    else:
        fit = _fit_scale(image, out_h, out_w)
        scale = fit if scale is None else tf.minimum(tf.cast(scale, tf.float32), fit)
    resized, boxes = _resize_within(image, boxes, scale, out_h, out_w, floor)
    return _pad(resized, out_h, out_w, pad_value), boxes, tf.cast(scale, tf.float32)


def clip_and_filter(boxes, labels, height, width, min_size=1.0, ignore=None):
    """Clip xyxy ``boxes`` [n, 4] to the image; drop those narrower or shorter than ``min_size``.

    Returns (boxes float32 [k, 4], labels [k]) with k <= n, or
    (boxes, labels, ignore) when ``ignore`` [n] is given.
    """
    boxes = tf.cast(boxes, tf.float32)
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    x_min, y_min, x_max, y_max = tf.unstack(boxes, num=4, axis=-1)
    x_min = tf.clip_by_value(x_min, 0.0, width)
    x_max = tf.clip_by_value(x_max, 0.0, width)
    y_min = tf.clip_by_value(y_min, 0.0, height)
    y_max = tf.clip_by_value(y_max, 0.0, height)
    clipped = tf.stack([x_min, y_min, x_max, y_max], axis=-1)
    keep = tf.logical_and(x_max - x_min >= min_size, y_max - y_min >= min_size)
    if ignore is None:
        return tf.boolean_mask(clipped, keep), tf.boolean_mask(labels, keep)
    return tf.boolean_mask(clipped, keep), tf.boolean_mask(labels, keep), tf.boolean_mask(ignore, keep)


def _decode(element):
    labels = tf.reshape(tf.cast(element["labels"], tf.int32), [-1])
    if "ignore" in element:
        ignore = tf.reshape(tf.cast(element["ignore"], tf.bool), [-1])
    else:
        ignore = tf.zeros_like(labels, dtype=tf.bool)
    return {
        "image": tf.cast(element["image"], tf.uint8),
        "image_id": tf.cast(element["image_id"], tf.int64),
        "boxes": tf.reshape(tf.cast(element["boxes"], tf.float32), [-1, 4]),
        "labels": labels,
        "ignore": ignore,
    }


def _geometry(image, boxes, height, width, training, augment, resize, seed):
    """Resize (+ training geometry) -> (unpadded float32 image, boxes, keep or None, scale)."""
    if training and augment.scale_range is not None:
        return transforms.random_scale_crop(
            image, boxes, (height, width), augment.scale_range, augment.min_area_fraction, seed=seed
        )
    fit = _fit_scale(image, height, width)
    shape = tf.shape(image)
    if training and augment.short_sides is not None:
        scale = transforms.random_short_side_scale(
            shape[0], shape[1], augment.short_sides, augment.max_size, seed=seed
        )
        scale = tf.minimum(scale, fit)
    elif resize is not None:
        scale, floor = _short_side_within(image, resize, height, width)
        image, boxes = _resize_within(image, boxes, scale, height, width, floor)
        return image, boxes, None, tf.cast(scale, tf.float32)
    else:
        scale = fit
    image, boxes = _resize_within(image, boxes, scale, height, width)
    return image, boxes, None, scale


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
    augment=None,
    resize=None,
    bounding_box_format="xyxy",
    start_epoch=0,
    start_batch=0,
    num_epochs=1,
    factory=False,
    pad_value=0.0,
):
    """Turn a dataset of detection elements into batches for ``FPNDetector.fit``.

    Training adds shuffling and the ``augment`` options (a
    ``transforms.Augment``, a dict of its fields, or None = random horizontal
    flips only; flips are applied before the resize, so padding stays
    bottom/right); ``drop_remainder`` defaults to ``training``.
    ``cache=True`` caches the decoded elements (in memory: small datasets).
    ``resize=(short_side, max_size)`` resizes like detectron2's test-time
    ``ResizeShortestEdge`` (capped to fit ``image_size``) instead of filling
    the canvas; multi-scale / scale-jitter training ignore it. ``pad_value``:
    the pixel value(s) of the padding (the model's ``pad_value``).

    Training batches come epoch by epoch, each a pure function of (seed, epoch)
    (see ``fpn_keras.data.epochs``): a stateless permutation of the elements
    (a global shuffle; ``shuffle_buffer`` only for sources without random
    access, e.g. TFDS) and per-element augmentation seeds from (seed, epoch,
    position). ``start_epoch`` / ``start_batch`` start at batch ``start_batch``
    of epoch ``start_epoch`` (a resumed run: the same batches an uninterrupted
    run trains on from there, nothing replayed); ``num_epochs``: how many epochs
    (None: unbounded). ``seed`` makes the pipeline deterministic: same seed, same
    batches, same augmentations (the parallel maps keep their order). Without a
    seed, a random one is drawn and the maps may return elements out of order.
    ``factory=True`` (training): returns ``make(start_epoch=0, start_batch=0,
    num_epochs=None)`` instead, whose datasets share one decoded (cached) source.

    Ignore boxes (element ``"ignore"`` True: COCO iscrowd, VOC difficult) are
    sorted after the others (so ``max_boxes`` truncation drops them first);
    in training batches their label is -1 (never matched as positives; they
    count as background), in evaluation batches they keep their label and
    ``"ignore"`` marks them for ``CocoEvaluator`` (``iscrowd``).

    ``bounding_box_format``: the format of the batches' boxes (the model's
    ``bounding_box_format``; any of ``fpn_keras.boxes.convert.FORMATS``); the
    padding rows stay -1.

    Returns:
        ``tf.data.Dataset`` of ``(images float32 [B, H, W, 3] in 0..255,
        {"boxes": float32 [B, max_boxes, 4] in ``bounding_box_format`` padded with -1,
        "labels": int32 [B, max_boxes] padded with -1,
        "ignore": bool [B, max_boxes] padded with False,
        "image_id": int64 [B], "image_scale": float32 [B], "image_size": int32 [B, 2]
        (each resized image's (h, w) on the canvas, the rest padding)})``, (H, W) = image_size
        (multiples of 32). Boxes / image_scale refer to
        the resized image: original pixels = boxes / image_scale (for
        evaluation batches; crops shift training boxes).
    """
    # The FPN handles sizes that are not multiples of its coarsest stride; 32 keeps C5 aligned.
    height, width = _output_hw(image_size, 32)
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    if int(max_boxes) <= 0:
        raise ValueError(f"max_boxes must be positive, got {max_boxes!r}")
    if resize is not None:
        resize = (float(resize[0]), None if resize[1] is None else float(resize[1]))
    augment = transforms.Augment.from_config(augment)
    if drop_remainder is None:
        drop_remainder = bool(training)
    deterministic = True if seed is not None else None
    autotune = tf.data.AUTOTUNE
    colour = training and (augment.brightness or augment.contrast or augment.saturation)

    # Training looks elements up by index where the source allows it (before decoding).
    view = epochs.random_access_view(dataset) if training else None
    if view is not None and view[1] and cache:
        view = None  # decode failures must be dropped before the cache: shuffle-buffer path
    if view is not None:
        dataset = view[0]
    dataset = dataset.map(_decode, num_parallel_calls=autotune, deterministic=deterministic)
    if cache:
        dataset = dataset.cache()
    elif view is not None:
        epochs.warm(dataset, view[2])

    def transform(element, element_seed):
        image, boxes = element["image"], element["boxes"]
        labels, ignore = element["labels"], element["ignore"]
        seed_flip, seed_colour, seed_geometry = transforms.split_seed(element_seed, 3)
        if training and augment.flip:
            image, boxes = transforms.random_horizontal_flip(image, boxes, seed=seed_flip)
        image, boxes, keep, scale = _geometry(
            image, boxes, height, width, training, augment, resize, seed_geometry
        )
        if keep is not None:
            boxes = tf.boolean_mask(boxes, keep)
            labels = tf.boolean_mask(labels, keep)
            ignore = tf.boolean_mask(ignore, keep)
        if colour:
            image = transforms.color_jitter(
                image, augment.brightness, augment.contrast, augment.saturation, seed=seed_colour
            )
        content = tf.shape(image)[:2]  # the resized image's (h, w) on the canvas
        image = _pad(image, height, width, pad_value)
        boxes, labels, ignore = clip_and_filter(boxes, labels, height, width, ignore=ignore)
        order = tf.argsort(tf.cast(ignore, tf.int32), stable=True)
        boxes, labels, ignore = (tf.gather(t, order) for t in (boxes, labels, ignore))
        # Real boxes beyond the padding would be lost silently: fail, naming the image.
        num_real = tf.reduce_sum(tf.cast(tf.logical_not(ignore), tf.int32))
        check = tf.debugging.Assert(
            num_real <= int(max_boxes),
            [f"an image has more ground-truth boxes than max_boxes={int(max_boxes)} "
             "(raise data.max_boxes / max_boxes=); image_id:", element["image_id"], "boxes:", num_real])
        with tf.control_dependencies([check]):
            boxes = tf.identity(boxes)
        if training:
            labels = tf.where(ignore, tf.constant(-1, tf.int32), labels)
        targets = {
            "boxes": boxes[:max_boxes],
            "labels": labels[:max_boxes],
            "ignore": ignore[:max_boxes],
            "image_id": element["image_id"],
            "image_scale": scale,
            "image_size": tf.cast(content, tf.int32),
        }
        return image, targets

    def batches(elements):
        return elements.map(transform, num_parallel_calls=autotune, deterministic=deterministic).padded_batch(
            int(batch_size), padded_shapes=padded_shapes, padding_values=padding_values,
            drop_remainder=drop_remainder)

    padded_shapes = (
        [height, width, 3],
        {"boxes": [max_boxes, 4], "labels": [max_boxes], "ignore": [max_boxes], "image_id": [], "image_scale": [],
         "image_size": [2]},
    )
    padding_values = (
        tf.constant(0.0, tf.float32),
        {
            "boxes": tf.constant(-1.0, tf.float32),
            "labels": tf.constant(-1, tf.int32),
            "ignore": tf.constant(False),
            "image_id": tf.constant(0, tf.int64),
            "image_scale": tf.constant(0.0, tf.float32),
            "image_size": tf.constant(0, tf.int32),
        },
    )

    def finish(batched):
        if bounding_box_format != "xyxy":
            batched = batched.map(lambda images, targets: (images, _convert_boxes(
                targets, check_format(bounding_box_format), height, width)), num_parallel_calls=autotune)
        return batched.prefetch(autotune)

    if not training:
        return finish(batches(dataset.map(lambda element: (element, tf.zeros([2], tf.int64)))))
    seed = epochs.resolve_seed(seed)

    def make(start_epoch=0, start_batch=0, num_epochs=None):
        return finish(_training_epochs(dataset, view, batches, int(batch_size), drop_remainder, seed,
                                       shuffle_buffer, deterministic, start_epoch, start_batch, num_epochs))

    return make if factory else make(start_epoch, start_batch, num_epochs)


def _training_epochs(elements, view, batches, batch_size, drop_remainder, seed, shuffle_buffer,
                     deterministic, start_epoch, start_batch, num_epochs):
    """Epochs start_epoch.. of batches (the first from batch start_batch) -> dataset."""
    size = int(elements.cardinality())
    if size < 0:
        per_epoch, num_positions = None, None
    else:
        per_epoch = size // batch_size if drop_remainder else -(-size // batch_size)
        num_positions = per_epoch * batch_size if drop_remainder else size
    start_epoch, start_batch = int(start_epoch), int(start_batch)
    if start_epoch < 0 or start_batch < 0 or (per_epoch is not None and start_batch and start_batch >= per_epoch):
        raise ValueError(f"start_epoch={start_epoch}, start_batch={start_batch}: expected epoch >= 0 and "
                         f"0 <= batch < {per_epoch} (the batches per epoch)")

    def one_epoch(epoch):
        first = tf.where(epoch == start_epoch, tf.constant(start_batch * batch_size, tf.int64),
                         tf.constant(0, tf.int64))
        return batches(epochs.epoch_elements(
            elements, view is not None, view is not None and view[1], epoch, first, num_positions, size,
            seed, shuffle_buffer, deterministic))

    stop = None if num_epochs is None else start_epoch + int(num_epochs)
    epoch_ids = tf.data.Dataset.counter(start_epoch) if stop is None else tf.data.Dataset.range(start_epoch, stop)
    dataset = epoch_ids.flat_map(one_epoch)
    if stop is not None and per_epoch is not None and not (view is not None and view[1]):
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(
            per_epoch * int(num_epochs) - start_batch))
    return dataset


def _convert_boxes(targets, bounding_box_format, height, width):
    """xyxy batch boxes [B, M, 4] -> `bounding_box_format` (padding rows stay -1)."""
    boxes = from_xyxy(targets["boxes"], bounding_box_format, height, width)
    return dict(targets, boxes=tf.where(targets["labels"][..., None] >= 0, boxes, -1.0))
