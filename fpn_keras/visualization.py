"""Drawing detections on images (PIL), saving image grids, and plotting training curves (matplotlib)."""

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


# ---------------------------------------------------------------- training curves

CURVE_SIZE = (960, 400)  # (width, height) of curves.png in pixels


def _read_history(history_csv):
    """CSVLogger file -> {column: [float or None per row]} (missing / NA -> None)."""
    import csv

    columns = {}
    if history_csv is None or not pathlib.Path(history_csv).is_file():
        return columns
    with open(history_csv, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key is None:
                    continue
                try:
                    number = float(value)
                    number = number if np.isfinite(number) else None
                except (TypeError, ValueError):
                    number = None
                columns.setdefault(key, []).append(number)
    return columns


def _curve_series(history_csv, metrics_history):
    """-> (loss series, metric series): lists of (name, [(epoch, value), ...]); epochs 1-based."""
    columns = _read_history(history_csv)
    n = max((len(v) for v in columns.values()), default=0)
    epochs = [int(e) + 1 if e is not None else i + 1
              for i, e in enumerate(columns.get("epoch", [None] * n))]

    def series(name):
        return [(x, y) for x, y in zip(epochs, columns[name]) if y is not None]

    losses = [(name, series(name)) for name in columns if "loss" in name and series(name)]
    metrics = []
    if metrics_history:
        items = metrics_history.items() if isinstance(metrics_history, dict) else metrics_history
        items = sorted((int(epoch), dict(values)) for epoch, values in items)
        names = [m for m in ("AP", "AP50", "AR100", "AR1000") if any(m in v for _, v in items)]
        for name in names:
            points = [(epoch + 1, float(v[name])) for epoch, v in items
                      if name in v and v[name] is not None and float(v[name]) >= 0]
            if points:
                metrics.append((name, points))
    else:
        for name in columns:
            base = name.split("_")[-1]
            if "loss" not in name and base in ("AP", "AP50", "AR100", "AR1000") and series(name):
                metrics.append((name, [(x, y) for x, y in series(name) if y >= 0]))
    return losses, [(name, points) for name, points in metrics if points]


def _plot_with_matplotlib(losses, metrics, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, 2, figsize=(CURVE_SIZE[0] / 100, CURVE_SIZE[1] / 100), dpi=100)
    for ax, title, series in ((axes[0], "training losses", losses), (axes[1], "evaluation", metrics)):
        for name, points in series:
            ax.plot([x for x, _ in points], [y for _, y in points], marker=".", label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", color="gray", transform=ax.transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_curves(history_csv, metrics_history=None, path="curves.png"):
    """Plots training curves to `path` (PNG, CURVE_SIZE pixels, matplotlib): the loss terms of
    `history_csv` (a keras CSVLogger file: columns "epoch", "loss", "cls_loss", ...) on the
    left, evaluation metrics (AP, AP50; AR100/AR1000 for an RPN) against the epoch on the
    right.

    Args:
        history_csv: path of the CSV log (missing file: empty loss panel).
        metrics_history: evaluation results as a list of (epoch, metrics dict) with 0-based
            epochs (`CocoMetricsCallback.history`) or a dict {epoch: metrics}; None reads
            metric columns (e.g. "AP", "val_AP") from the CSV instead.
        path: output PNG; parent folders are created.

    Returns the path written.
    """
    losses, metrics = _curve_series(history_csv, metrics_history)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _plot_with_matplotlib(losses, metrics, path)
    return path
