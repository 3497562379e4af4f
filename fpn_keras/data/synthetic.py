"""Built-in synthetic shapes dataset for demos and tests.

Each image has a smooth colour-gradient background with gaussian noise, thin
clutter (lines and dots that are *not* objects) and 1..N filled shapes whose
class decides the geometry (see ``CLASS_NAMES``). Boxes are ``xyxy`` absolute
pixels (float32), the tight bounding box of the drawn pixels with exclusive
``x_max``/``y_max`` (a shape covering pixel columns 10..19 has x_min=10,
x_max=20). Padding rows are -1.
"""

import colorsys

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

CLASS_NAMES = ("rectangle", "ellipse", "triangle", "cross")

SPLITS = {"train": (2000, 0), "val": (200, 1_000_003), "test": (200, 2_000_006)}
"""split -> (default num_images, offset added to ``seed`` for its seed stream)."""

_MAX_IOU = 0.3
_PLACEMENT_TRIES = 20
_COLOUR_TRIES = 20
_MIN_COLOUR_DISTANCE = 110.0


def _iou(box, others):
    """IoU of one xyxy box [4] with others [K, 4] -> [K]."""
    others = np.asarray(others, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (area + areas - inter)


def _background(rng, height, width):
    """Smooth random two-colour linear gradient + gaussian noise -> float32 [H, W, 3]."""
    c0, c1 = rng.uniform(40, 215, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.ogrid[:height, :width]
    t = np.cos(angle) * xs / width + np.sin(angle) * ys / height
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    image = c0 + (c1 - c0) * t[..., None]
    image += rng.normal(0.0, rng.uniform(2.0, 8.0), size=(height, width, 3))
    return image.astype(np.float32)


def _random_colour(rng):
    """Saturated bright RGB colour as a tuple of 3 ints."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0)
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v))


def _draw_clutter(rng, draw, height, width):
    """A few thin lines (1-2 px) and small dots (1-3 px): non-object distractors."""
    for _ in range(rng.integers(1, 5)):
        x0, x1 = rng.uniform(0, width, size=2)
        y0, y1 = rng.uniform(0, height, size=2)
        draw.line([(x0, y0), (x1, y1)], fill=_random_colour(rng), width=int(rng.integers(1, 3)))
    for _ in range(rng.integers(2, 9)):
        d = int(rng.integers(1, 4))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.ellipse([x, y, x + d - 1, y + d - 1], fill=_random_colour(rng))


def _shape_size(rng, label, min_size, max_size):
    """(w, h) in pixels: longer side log-uniform in [min_size, max_size]."""
    longer = np.exp(rng.uniform(np.log(min_size), np.log(max_size)))
    max_aspect = {0: 3.0, 1: 2.5, 2: 1.6, 3: 1.4}[label]
    aspect = np.exp(rng.uniform(0.0, np.log(max_aspect)))
    shorter = max(longer / aspect, 3.0)
    w, h = (longer, shorter) if rng.uniform() < 0.5 else (shorter, longer)
    return max(int(round(w)), 3), max(int(round(h)), 3)


def _shape_mask(rng, label, w, h):
    """Draw one shape of class ``label`` filling a (w, h) box -> PIL 'L' mask."""
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    if label == 0:  # rectangle
        draw.rectangle([0, 0, w - 1, h - 1], fill=255)
    elif label == 1:  # ellipse
        draw.ellipse([0, 0, w - 1, h - 1], fill=255)
    elif label == 2:  # triangle: one vertex per side, area >= ~1/4 of the box
        top = (rng.uniform(0, w - 1), 0.0)
        left = (0.0, rng.uniform((h - 1) / 2, h - 1))
        corner = (w - 1.0, h - 1.0)
        points = [top, left, corner]
        if rng.uniform() < 0.5:
            points = [(w - 1 - x, y) for x, y in points]
        if rng.uniform() < 0.5:
            points = [(x, h - 1 - y) for x, y in points]
        draw.polygon(points, fill=255)
    else:  # cross: a full-width horizontal bar and a full-height vertical bar
        tw = max(int(round(w * rng.uniform(0.2, 0.4))), 1)
        th = max(int(round(h * rng.uniform(0.2, 0.4))), 1)
        x0 = int(rng.integers(int(0.2 * (w - tw)), int(0.8 * (w - tw)) + 1))
        y0 = int(rng.integers(int(0.2 * (h - th)), int(0.8 * (h - th)) + 1))
        draw.rectangle([x0, 0, x0 + tw - 1, h - 1], fill=255)
        draw.rectangle([0, y0, w - 1, y0 + th - 1], fill=255)
    return mask


def _object_colour(rng, local_mean):
    """Random saturated colour far (RGB distance) from the local background mean."""
    best, best_dist = None, -1.0
    for _ in range(_COLOUR_TRIES):
        colour = _random_colour(rng)
        dist = float(np.linalg.norm(np.asarray(colour, np.float32) - local_mean))
        if dist > best_dist:
            best, best_dist = colour, dist
        if dist >= _MIN_COLOUR_DISTANCE:
            break
    return best


def _render(rng, height, width, num_objects, min_size, max_size, clutter):
    """Render one image -> (uint8 [H, W, 3], boxes float32 [n, 4] xyxy, labels int32 [n])."""
    background = _background(rng, height, width)
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    if clutter:
        _draw_clutter(rng, draw, height, width)
    boxes, labels = [], []
    for _ in range(num_objects):
        label = int(rng.integers(len(CLASS_NAMES)))
        for _ in range(_PLACEMENT_TRIES):
            w, h = _shape_size(rng, label, min_size, max_size)
            w, h = min(w, width), min(h, height)
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            box = np.array([x0, y0, x0 + w, y0 + h], np.float64)
            if not boxes or _iou(box, boxes).max() <= _MAX_IOU:
                break
        else:
            continue  # gave up: this image gets fewer objects
        mask = _shape_mask(rng, label, w, h)
        bbox = mask.getbbox()
        if bbox is None:
            continue
        local_mean = background[y0 : y0 + h, x0 : x0 + w].reshape(-1, 3).mean(axis=0)
        image.paste(_object_colour(rng, local_mean), (x0, y0), mask)
        tight = np.array([x0 + bbox[0], y0 + bbox[1], x0 + bbox[2], y0 + bbox[3]], np.float64)
        tight = np.clip(tight, 0, [width, height, width, height])
        boxes.append(tight)
        labels.append(label)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.asarray(image, np.uint8), boxes, np.asarray(labels, np.int32)


def _check_size(image_size):
    try:
        height, width = (int(s) for s in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), got {image_size!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return height, width


def generate(
    num_images,
    image_size=(128, 128),
    seed=0,
    min_objects=1,
    max_objects=6,
    min_size=8,
    max_size=None,
    max_boxes=None,
    clutter=True,
):
    """Generate ``num_images`` synthetic images as padded numpy arrays.

    Image ``i`` is drawn from ``np.random.default_rng([seed, i])``, so it does
    not depend on ``num_images``. ``max_size`` defaults to half the shorter
    image side; ``clutter=False`` omits the distractor lines and dots.

    Returns:
        dict with ``images`` uint8 [N, H, W, 3], ``boxes`` float32 [N, M, 4]
        xyxy absolute pixels padded with -1, ``labels`` int32 [N, M] padded
        with -1 and ``image_ids`` int64 [N] (= arange(N)); M = max_boxes or
        max_objects.
    """
    height, width = _check_size(image_size)
    if int(num_images) < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images!r}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed!r}")
    if not 0 <= min_objects <= max_objects:
        raise ValueError(
            f"need 0 <= min_objects <= max_objects, got min_objects={min_objects!r}, "
            f"max_objects={max_objects!r}"
        )
    if max_size is None:
        max_size = min(height, width) / 2
    if not 3 <= min_size <= max_size <= min(height, width):
        raise ValueError(
            f"need 3 <= min_size <= max_size <= min(image_size), got min_size={min_size!r}, "
            f"max_size={max_size!r}, image_size={image_size!r}"
        )
    num_boxes = max_objects if max_boxes is None else int(max_boxes)
    if num_boxes < max_objects:
        raise ValueError(f"max_boxes must be >= max_objects={max_objects}, got {max_boxes!r}")

    n = int(num_images)
    images = np.zeros((n, height, width, 3), np.uint8)
    boxes = np.full((n, num_boxes, 4), -1.0, np.float32)
    labels = np.full((n, num_boxes), -1, np.int32)
    for i in range(n):
        rng = np.random.default_rng([int(seed), i])
        count = int(rng.integers(min_objects, max_objects + 1))
        image, b, lab = _render(rng, height, width, count, min_size, max_size, clutter)
        images[i] = image
        boxes[i, : len(b)] = b
        labels[i, : len(lab)] = lab
    return {
        "images": images,
        "boxes": boxes,
        "labels": labels,
        "image_ids": np.arange(n, dtype=np.int64),
    }


def _drop_padding(image, image_id, boxes, labels):
    keep = labels >= 0
    return {
        "image": image,
        "image_id": image_id,
        "boxes": tf.boolean_mask(boxes, keep),
        "labels": tf.boolean_mask(labels, keep),
    }


def load(split="train", num_images=None, image_size=(128, 128), seed=0, **kwargs):
    """Synthetic split as an unbatched ``tf.data.Dataset``.

    Splits: "train" (default 2000 images), "val" and "test" (default 200 each),
    drawn from disjoint seed streams. ``kwargs`` go to ``generate``.

    Elements: ``{"image": uint8 [H, W, 3], "image_id": int64 [],
    "boxes": float32 [n, 4] xyxy absolute pixels, "labels": int32 [n]}``
    with only the real objects (no padding).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    default_count, offset = SPLITS[split]
    count = default_count if num_images is None else num_images
    data = generate(count, image_size=image_size, seed=int(seed) + offset, **kwargs)
    dataset = tf.data.Dataset.from_tensor_slices(
        (data["images"], data["image_ids"], data["boxes"], data["labels"])
    )
    return dataset.map(_drop_padding)
