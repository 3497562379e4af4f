"""Drawing detections on images (PIL) and saving image grids."""

import colorsys
import pathlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def class_colors(num_classes):
    """Returns `num_classes` distinct, deterministic RGB tuples (0..255).

    Hues are spread with the golden ratio so neighbouring labels differ.
    """
    if int(num_classes) < 0:
        raise ValueError(f"`num_classes` must be >= 0, received {num_classes}.")
    colors = []
    for i in range(int(num_classes)):
        hue = (i * 0.618033988749895) % 1.0
        value = 1.0 if i % 2 == 0 else 0.8
        r, g, b = colorsys.hsv_to_rgb(hue, 0.9, value)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def _to_uint8_image(image):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"`image` must have shape [H, W, 3], received shape {image.shape}."
        )
    if image.dtype != np.uint8:
        image = np.clip(np.round(image.astype(np.float32)), 0, 255)
    return image.astype(np.uint8)  # always a copy


def draw_detections(
    image,
    boxes,
    labels,
    scores=None,
    class_names=None,
    score_threshold=0.0,
    num_detections=None,
    line_width=2,
):
    """Draws boxes with a "name 0.93" tag in class colours.

    Args:
        image: [H, W, 3] uint8, or float in 0..255.
        boxes: [N, 4] xyxy absolute pixels.
        labels: [N] int; rows with label < 0 are padding and skipped.
        scores: optional [N]; rows with score < `score_threshold` skipped.
        class_names: optional list of names (default: the label number).
        score_threshold: minimum score drawn.
        num_detections: optional int; only the first n rows are drawn.
        line_width: rectangle outline width in pixels (drawn inwards).

    Returns:
        New [H, W, 3] uint8 array; `image` is not modified.
    """
    canvas = Image.fromarray(_to_uint8_image(image))
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"`boxes` ({boxes.shape[0]} rows) and `labels` "
            f"({labels.shape[0]} rows) must have the same length."
        )
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if scores.shape[0] != boxes.shape[0]:
            raise ValueError(
                f"`scores` has {scores.shape[0]} rows, expected "
                f"{boxes.shape[0]}."
            )
    count = boxes.shape[0] if num_detections is None else int(num_detections)
    num_colors = max(int(labels.max(initial=-1)) + 1, len(class_names or []))
    colors = class_colors(num_colors)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()

    for i in range(min(count, boxes.shape[0])):
        label = int(labels[i])
        if label < 0:
            continue
        if scores is not None and scores[i] < score_threshold:
            continue
        color = colors[label]
        x1, y1, x2, y2 = (int(round(float(v))) for v in boxes[i])
        draw.rectangle([x1, y1, x2, y2], outline=color, width=line_width)

        name = (
            class_names[label]
            if class_names is not None and label < len(class_names)
            else str(label)
        )
        text = name if scores is None else f"{name} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 2
        ty = y1 - th if y1 - th >= 0 else y1  # above the box, else inside
        draw.rectangle([x1, ty, x1 + tw - 1, ty + th - 1], fill=color)
        brightness = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        text_color = (0, 0, 0) if brightness > 128 else (255, 255, 255)
        draw.text((x1 + 2 - left, ty + 1 - top), text, fill=text_color, font=font)
    return np.asarray(canvas, dtype=np.uint8).copy()


def make_grid(images, cols=4, pad=4):
    """Tiles [H, W, 3] images into one uint8 array, `cols` per row, with
    `pad` black pixels between and around them. Cells are sized to the
    largest image; smaller images sit in the top-left of their cell."""
    images = [_to_uint8_image(img) for img in images]
    if not images:
        raise ValueError("`images` must contain at least one image, received 0.")
    if int(cols) < 1:
        raise ValueError(f"`cols` must be >= 1, received {cols}.")
    if int(pad) < 0:
        raise ValueError(f"`pad` must be >= 0, received {pad}.")
    cols = min(int(cols), len(images))
    rows = -(-len(images) // cols)
    cell_h = max(img.shape[0] for img in images)
    cell_w = max(img.shape[1] for img in images)
    grid = np.zeros(
        (rows * (cell_h + pad) + pad, cols * (cell_w + pad) + pad, 3), np.uint8
    )
    for i, img in enumerate(images):
        y = pad + (i // cols) * (cell_h + pad)
        x = pad + (i % cols) * (cell_w + pad)
        grid[y:y + img.shape[0], x:x + img.shape[1]] = img
    return grid


def save_image(array, path):
    """Writes an [H, W, 3] image (uint8 or float 0..255) to `path` as PNG,
    creating parent directories."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_to_uint8_image(array)).save(path, format="PNG")
    return path
