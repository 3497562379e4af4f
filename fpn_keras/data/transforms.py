"""Graph-safe detection augmentations (tf ops; usable inside ``tf.data``).

Images are ``[H, W, 3]`` (any numeric dtype; the photometric ops work on
float32 in 0..255), boxes are float32 ``[n, 4]`` xyxy absolute pixels.
Operations that can remove boxes return a boolean ``keep`` mask ``[n]`` that
the caller applies to labels / ignore flags as well.

Randomness: every random op takes ``seed``, which may be ``None`` (stateful,
non-deterministic), a python int (stateful op seed) or a shape-[2] integer
tensor (stateless: the same seed always gives the same result; this is what
``pipeline.prepare`` uses for its deterministic mode).

``Augment`` collects the options of a training recipe; ``pipeline.prepare``
applies them in the order flip -> (scale jitter + crop | multi-scale | plain
resize) -> colour jitter -> pad.
"""

import dataclasses

import tensorflow as tf


def _is_stateless(seed):
    return seed is not None and not isinstance(seed, int)


def _uniform(seed, minval=0.0, maxval=1.0, shape=()):
    if _is_stateless(seed):
        return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval)
    return tf.random.uniform(shape, minval=minval, maxval=maxval, seed=seed)


def split_seed(seed, num):
    """``num`` independent seeds derived from ``seed`` (stateless seeds are
    split with ``tf.random.experimental.stateless_split``; None/int repeat)."""
    if _is_stateless(seed):
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num)
        return [seeds[i] for i in range(num)]
    if seed is None:
        return [None] * num
    return [int(seed) + i for i in range(num)]


# -- geometry -------------------------------------------------------------------------


def horizontal_flip(image, boxes):
    """Flip ``image`` [H, W, C] and xyxy ``boxes`` [n, 4] left-right.

    A flipped box is (W - x_max, y_min, W - x_min, y_max).
    """
    boxes = tf.cast(boxes, tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    x_min, y_min, x_max, y_max = tf.unstack(boxes, num=4, axis=-1)
    flipped = tf.stack([width - x_max, y_min, width - x_min, y_max], axis=-1)
    return tf.reverse(image, axis=[1]), flipped


def random_horizontal_flip(image, boxes, seed=None, probability=0.5):
    """With probability ``probability`` apply ``horizontal_flip``. Returns (image, boxes)."""
    boxes = tf.cast(boxes, tf.float32)
    do_flip = _uniform(seed) < probability
    return tf.cond(do_flip, lambda: horizontal_flip(image, boxes), lambda: (image, boxes))


def short_side_scale(height, width, short_side, max_size=None, dtype=tf.float32):
    """Scale that makes the short side ``short_side`` unless the long side would
    exceed ``max_size`` (detectron2's ``ResizeShortestEdge``) -> scalar of ``dtype``
    (float64: torchvision's arithmetic, for its floor of the new size)."""
    height = tf.cast(height, dtype)
    width = tf.cast(width, dtype)
    scale = tf.cast(short_side, dtype) / tf.minimum(height, width)
    if max_size is not None:
        scale = tf.minimum(scale, tf.cast(max_size, dtype) / tf.maximum(height, width))
    return scale


def resize(image, boxes, scale):
    """Resize ``image`` by ``scale`` (output size rounded, at least 1 pixel) and
    scale ``boxes`` by the same factor -> (float32 image in 0..255, boxes)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(scale, tf.float32)
    new_hw = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    resized = tf.image.resize(tf.cast(image, tf.float32), new_hw)
    resized = tf.clip_by_value(resized, 0.0, 255.0)
    return resized, tf.cast(boxes, tf.float32) * scale


def random_short_side_scale(height, width, short_sides, max_size=None, seed=None):
    """Multi-scale training: the short side is drawn uniformly from the list
    ``short_sides`` (detectron2 ``ResizeShortestEdge(sample_style="choice")``)."""
    choices = tf.constant([float(s) for s in short_sides], tf.float32)
    index = tf.minimum(
        tf.cast(_uniform(seed) * float(len(short_sides)), tf.int32), len(short_sides) - 1
    )
    return short_side_scale(height, width, tf.gather(choices, index), max_size)


def crop(image, boxes, top, left, height, width, min_area_fraction=0.5):
    """Crop the window (top, left, height, width) of ``image``, shift and clip ``boxes``.

    A box is kept when its clipped area is > 0 and at least ``min_area_fraction``
    of its area before clipping (boxes mostly cut away are dropped, as in
    RetinaNet/EfficientDet scale-jitter recipes).

    Returns (image [height', width', C], boxes float32 [n, 4] clipped to the
    window, keep bool [n]); height'/width' are clipped to the image.
    """
    boxes = tf.cast(boxes, tf.float32)
    img_h, img_w = tf.shape(image)[0], tf.shape(image)[1]
    top = tf.cast(top, tf.int32)
    left = tf.cast(left, tf.int32)
    height = tf.minimum(tf.cast(height, tf.int32), img_h - top)
    width = tf.minimum(tf.cast(width, tf.int32), img_w - left)
    cropped = image[top : top + height, left : left + width]
    shift = tf.cast(tf.stack([left, top, left, top]), tf.float32)
    shifted = boxes - shift
    limit = tf.cast(tf.stack([width, height, width, height]), tf.float32)
    clipped = tf.clip_by_value(shifted, 0.0, limit)
    area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    new_area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = tf.logical_and(new_area > 0.0, new_area >= min_area_fraction * area)
    return cropped, clipped, keep


def random_scale_crop(image, boxes, output_size, scale_range=(0.5, 2.0), min_area_fraction=0.5,
                      seed=None):
    """Random scale jitter + crop (RetinaNet / EfficientDet / large-scale-jitter style).

    The image is resized so that it fits ``output_size`` times a factor drawn
    uniformly from ``scale_range``; when it is then larger than ``output_size``
    a random ``output_size`` window is cropped (boxes shifted, clipped, and
    those keeping less than ``min_area_fraction`` of their area dropped).

    Returns (image float32 [h <= H, w <= W, 3] (not padded), boxes, keep, scale)
    where ``scale`` is the resize factor applied before the crop.
    """
    out_h, out_w = (int(s) for s in output_size)
    seed_scale, seed_y, seed_x = split_seed(seed, 3)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    fit = tf.minimum(out_h / shape[0], out_w / shape[1])
    factor = _uniform(seed_scale, float(scale_range[0]), float(scale_range[1]))
    scale = fit * factor
    resized, boxes = resize(image, boxes, scale)
    new_h, new_w = tf.shape(resized)[0], tf.shape(resized)[1]
    top = tf.cast(
        tf.floor(_uniform(seed_y) * tf.cast(tf.maximum(new_h - out_h, 0) + 1, tf.float32)), tf.int32
    )
    left = tf.cast(
        tf.floor(_uniform(seed_x) * tf.cast(tf.maximum(new_w - out_w, 0) + 1, tf.float32)), tf.int32
    )
    top = tf.minimum(top, tf.maximum(new_h - out_h, 0))
    left = tf.minimum(left, tf.maximum(new_w - out_w, 0))
    cropped, boxes, keep = crop(resized, boxes, top, left, out_h, out_w, min_area_fraction)
    return cropped, boxes, keep, scale


# -- photometric ----------------------------------------------------------------------


def color_jitter(image, brightness=0.0, contrast=0.0, saturation=0.0, seed=None):
    """Random brightness (additive, in 0..255 units: delta in [-b, b] * 255),
    contrast and saturation (factors in [1 - c, 1 + c]) -> float32 image in 0..255.

    A zero strength skips that op. Works on float32 0..255 (uint8 is cast).
    """
    image = tf.cast(image, tf.float32)
    seed_b, seed_c, seed_s = split_seed(seed, 3)
    if brightness:
        image = image + 255.0 * _uniform(seed_b, -float(brightness), float(brightness))
    if contrast:
        factor = _uniform(seed_c, 1.0 - float(contrast), 1.0 + float(contrast))
        mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
        image = (image - mean) * factor + mean
    if saturation:
        factor = _uniform(seed_s, 1.0 - float(saturation), 1.0 + float(saturation))
        gray = tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
        image = (image - gray) * factor + gray
    return tf.clip_by_value(image, 0.0, 255.0)


# -- recipe options -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Augment:
    """Training augmentation options (the default is flip only).

    flip: random horizontal flip with probability 0.5.
    short_sides / max_size: multi-scale training, the short side drawn from
        ``short_sides`` with the long side capped at ``max_size`` (and always
        capped to fit the output canvas).
    scale_range: random scale jitter + crop, e.g. (0.1, 2.0) (overrides
        ``short_sides``); ``min_area_fraction`` is the share of its area a
        box must keep to survive the crop.
    brightness / contrast / saturation: colour jitter strengths (0 = off).
    """

    flip: bool = True
    short_sides: tuple = None
    max_size: int = None
    scale_range: tuple = None
    min_area_fraction: float = 0.5
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def __post_init__(self):
        if self.short_sides is not None:
            sides = tuple(int(s) for s in self.short_sides)
            if not sides or min(sides) <= 0:
                raise ValueError(f"short_sides must be positive sizes, got {self.short_sides!r}")
            object.__setattr__(self, "short_sides", sides)
        if self.scale_range is not None:
            low, high = (float(s) for s in self.scale_range)
            if not 0 < low <= high:
                raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range!r}")
            object.__setattr__(self, "scale_range", (low, high))
        if not 0.0 <= float(self.min_area_fraction) <= 1.0:
            raise ValueError(f"min_area_fraction must be in [0, 1], got {self.min_area_fraction!r}")
        for name in ("brightness", "contrast", "saturation"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    @classmethod
    def from_config(cls, config):
        """None -> default, an ``Augment`` -> itself, a dict -> ``Augment(**dict)``,
        False -> no augmentation at all."""
        if config is None or config is True:
            return cls()
        if config is False:
            return cls(flip=False)
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            unknown = set(config) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"unknown augment options {sorted(unknown)}")
            return cls(**config)
        raise TypeError(f"augment must be None, a bool, a dict or Augment, got {config!r}")


__all__ = [
    "Augment",
    "color_jitter",
    "crop",
    "horizontal_flip",
    "random_horizontal_flip",
    "random_scale_crop",
    "random_short_side_scale",
    "resize",
    "short_side_scale",
    "split_seed",
]
