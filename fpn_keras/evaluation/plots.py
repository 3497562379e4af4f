"""Evaluation pictures drawn with matplotlib (Agg, no display): precision-recall curves per
class and the worst images. Every figure has a fixed size in pixels (see the *_size
functions), so callers and tests know what to expect."""

import io
import pathlib

import numpy as np

from fpn_keras import visualization

PR_PANEL = (240, 200)  # (width, height) of one PR panel in pixels
PR_COLUMNS = 6
WORST_PANEL = (300, 320)  # (width, height) of one worst-image panel in pixels
DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pr_figure_size(num_panels):
    """(width, height) in pixels of the PR figure with `num_panels` panels (classes + "all")."""
    cols = min(PR_COLUMNS, max(int(num_panels), 1))
    rows = -(-max(int(num_panels), 1) // cols)
    return cols * PR_PANEL[0], rows * PR_PANEL[1]


def worst_figure_size(num_columns, num_rows=2):
    """(width, height) in pixels of the worst-images figure."""
    return max(int(num_columns), 1) * WORST_PANEL[0], max(int(num_rows), 1) * WORST_PANEL[1]


def _save(figure, path):
    """Saves `figure` as PNG at its exact size (no tight bbox); path None -> uint8 [H, W, 3]."""
    plt = _pyplot()
    if path is None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
        plt.close(figure)
        from PIL import Image

        buffer.seek(0)
        with Image.open(buffer) as image:
            return np.asarray(image.convert("RGB"))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI)
    plt.close(figure)
    return path


def plot_pr_curves(recall, curves, names, mean=None, path=None, title_values=None):
    """One small panel per class (precision against recall) plus "all" (the mean curve).

    Args:
        recall: [R] recall thresholds; curves: list of [R] precision arrays or None (a class
            without ground truth: an empty panel that says so); names: one per curve.
        mean: optional [R] precision of "all" (first panel).
        title_values: optional list (one per curve, None allowed) of the AP shown in titles.
        path: PNG to write (returned), or None to return the picture as uint8 [H, W, 3].
    Size: `pr_figure_size(len(curves) + (mean is not None))`.
    """
    plt = _pyplot()
    panels = ([("all", mean, None)] if mean is not None else []) + list(
        zip(names, curves, title_values or [None] * len(curves)))
    width, height = pr_figure_size(len(panels))
    cols = min(PR_COLUMNS, max(len(panels), 1))
    rows = -(-max(len(panels), 1) // cols)
    figure, axes = plt.subplots(rows, cols, figsize=(width / DPI, height / DPI), dpi=DPI, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    if mean is not None:
        panels[0] = ("all", mean, float(np.mean(mean)))
    for ax, (name, curve, value) in zip(axes.flat, panels):
        label = name if value is None else f"{name} AP50={value:.2f}"
        ax.set_title(label[:28], fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        if curve is None:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", fontsize=7, color="gray")
            continue
        ax.fill_between(recall, curve, alpha=0.2, color="tab:blue")
        ax.plot(recall, curve, color="tab:blue", linewidth=1.2)
    figure.supxlabel("recall (IoU 0.5)", fontsize=8)
    figure.supylabel("precision", fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def plot_worst_images(rows, path=None, class_names=None, score_threshold=0.3, max_false_positives=3):
    """A grid of images with their ground truth and detections: one row per (title, panels)
    in `rows`, e.g. ("most missed ground truth", [...]), ("most confident false positives", [...]).

    A panel is a dict: "image" uint8 [h, w, 3]; "title"; "gt_boxes" [G, 4] xyxy in the
    image's pixels, "gt_matched" / "gt_ignore" [G] bool; "det_boxes" [D, 4], "det_labels"
    [D] (0-based, for colours and `class_names`), "det_scores" [D], "det_fp" [D] bool.
    Detections with score >= `score_threshold` and the `max_false_positives` most confident
    false positives are drawn in class colours with their score (draw_detections); ground
    truth as dashed outlines: green found, red missed, grey ignored.
    Size: `worst_figure_size(max panels in a row, len(rows))`.
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    num_cols = max([len(panels) for _, panels in rows] + [1])
    width, height = worst_figure_size(num_cols, len(rows))
    figure, axes = plt.subplots(max(len(rows), 1), num_cols, figsize=(width / DPI, height / DPI), dpi=DPI,
                                squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (row_title, panels) in enumerate(rows):
        if not panels:
            axes[r, 0].text(0.5, 0.5, f"{row_title}:\nnone", ha="center", va="center", fontsize=9)
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            scores = np.asarray(panel["det_scores"], np.float32)
            false_positives = np.flatnonzero(np.asarray(panel["det_fp"], bool))
            keep = scores >= score_threshold
            keep[false_positives[np.argsort(-scores[false_positives], kind="stable")][:max_false_positives]] = True
            drawn = visualization.draw_detections(
                panel["image"], np.asarray(panel["det_boxes"], np.float32).reshape(-1, 4)[keep],
                np.asarray(panel["det_labels"]).reshape(-1)[keep], scores[keep], class_names=class_names,
                line_width=1)
            ax.imshow(drawn)
            for box, matched, ignore in zip(np.asarray(panel["gt_boxes"]).reshape(-1, 4), panel["gt_matched"],
                                            panel["gt_ignore"]):
                color = "gray" if ignore else ("lime" if matched else "red")
                ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                       edgecolor=color, linestyle="--", linewidth=1.5))
            ax.set_title(f"{row_title if c == 0 else ''}\n{panel['title']}", fontsize=8)
    figure.tight_layout()
    return _save(figure, path)
