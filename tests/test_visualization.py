import numpy as np
import pytest
from PIL import Image

from fpn_keras.visualization import (
    class_colors,
    draw_detections,
    make_grid,
    save_image,
)


def _edge_mask(shape, box, width):
    """Pixels of an outline drawn inwards: rows/cols x1..x2, y1..y2 inclusive."""
    x1, y1, x2, y2 = box
    mask = np.zeros(shape[:2], bool)
    mask[y1:y2 + 1, x1:x2 + 1] = True
    mask[y1 + width:y2 + 1 - width, x1 + width:x2 + 1 - width] = False
    return mask


def test_class_colors_distinct_and_deterministic():
    colors = class_colors(20)
    assert len(colors) == 20
    assert len(set(colors)) == 20
    assert colors == class_colors(20)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colors)
    assert class_colors(0) == []
    with pytest.raises(ValueError, match="-1"):
        class_colors(-1)


def test_draw_detections_edges_in_class_color():
    image = np.full((100, 120, 3), 128, np.uint8)
    original = image.copy()
    box = (20, 40, 70, 80)  # xyxy; y1=40 leaves room for the tag above
    out = draw_detections(image, np.array([box], np.float32),
                          labels=np.array([1]), scores=np.array([0.93]),
                          class_names=["cat", "dog"], line_width=2)
    color = np.array(class_colors(2)[1], np.uint8)
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(image, original)  # input untouched

    edge = _edge_mask(image.shape, box, 2)
    changed = np.any(out != image, axis=-1)
    # From the top edge down, exactly the outline changed, all in colour.
    np.testing.assert_array_equal(changed[40:], edge[40:])
    assert np.all(out[edge] == color)
    # A few known pixels: corners, bottom/right edge incl. inner line.
    for y, x in [(40, 20), (80, 70), (79, 45), (60, 69), (41, 21)]:
        np.testing.assert_array_equal(out[y, x], color)
    for y, x in [(42, 22), (60, 45), (81, 45), (60, 71)]:
        np.testing.assert_array_equal(out[y, x], [128, 128, 128])
    # The tag sits just above the box, starting at x1.
    assert changed[30:40, 20:40].any()
    assert not changed[:40, :20].any()


def test_padding_rows_and_threshold_skipped():
    image = np.zeros((64, 64, 3), np.float32)  # float input accepted
    boxes = np.array([[30, 30, 50, 50], [5, 40, 25, 60], [2, 2, 20, 20]],
                     np.float32)
    labels = np.array([0, 0, -1])
    scores = np.array([0.9, 0.2, 0.0])
    out = draw_detections(image, boxes, labels, scores, score_threshold=0.5)
    assert out.dtype == np.uint8
    changed = np.any(out != 0, axis=-1)
    assert changed[50, 40]  # bottom edge of the kept box
    assert not changed[40:61, 0:26].any()  # low-score box not drawn
    assert not changed[:21, :21].any()  # padding row (label -1) not drawn
    # num_detections also limits rows.
    out = draw_detections(image, boxes, labels, scores, num_detections=0)
    assert not out.any()
    # Nothing to draw -> identical copy.
    out = draw_detections(image, boxes[2:], labels[2:])
    np.testing.assert_array_equal(out, np.zeros((64, 64, 3), np.uint8))


def test_draw_detections_bad_image_shape():
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        draw_detections(np.zeros((8, 8)), np.zeros((0, 4)), np.zeros((0,)))


def test_make_grid_layout():
    a = np.full((10, 20, 3), 50, np.uint8)
    b = np.full((10, 20, 3), 200, np.uint8)
    grid = make_grid([a, b, a], cols=2, pad=4)
    # 2 rows x 2 cols of 10x20 cells with 4-pixel padding.
    assert grid.shape == (2 * 14 + 4, 2 * 24 + 4, 3)
    assert grid.dtype == np.uint8
    assert np.all(grid[4:14, 4:24] == 50)
    assert np.all(grid[4:14, 28:48] == 200)
    assert np.all(grid[18:28, 4:24] == 50)
    assert np.all(grid[18:28, 28:48] == 0)  # empty cell
    assert np.all(grid[:4] == 0)


def test_save_image_round_trip(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (17, 23, 3), np.uint8)
    path = tmp_path / "nested" / "dir" / "out.png"
    save_image(array, path)
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (23, 17)
        np.testing.assert_array_equal(np.asarray(img.convert("RGB")), array)


def _history(path, rows):
    path.write_text("epoch,box_loss,cls_loss,loss,val_AP\n" + "".join(
        f"{i},{0.5 / (i + 1)},{1.0 / (i + 1)},{1.5 / (i + 1)},{ap}\n" for i, ap in enumerate(rows)))
    return path


# matplotlib's first three line colours (tab:blue, tab:orange, tab:green)
LINE_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44))


def _count(pixels, color):
    return int(np.all(np.abs(pixels.astype(int) - color) <= 10, axis=-1).sum())


def test_plot_curves(tmp_path):
    from fpn_keras.visualization import CURVE_SIZE, plot_curves

    history = _history(tmp_path / "history.csv", ["NA", 0.1, 0.2])
    path = plot_curves(history, [(1, {"AP": 0.1, "AP50": 0.3}), (2, {"AP": 0.2, "AP50": 0.4})],
                       tmp_path / "out" / "curves.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == CURVE_SIZE
        pixels = np.asarray(img.convert("RGB"))
    left, right = pixels[:, : CURVE_SIZE[0] // 2], pixels[:, CURVE_SIZE[0] // 2:]
    # three loss lines (box_loss, cls_loss, loss) on the left, AP and AP50 on the right
    for color in LINE_COLORS:
        assert _count(left, color) > 50, color
    assert _count(right, LINE_COLORS[0]) > 50 and _count(right, LINE_COLORS[1]) > 50
    assert _count(right, LINE_COLORS[2]) == 0  # no third metric


def test_plot_curves_reads_metrics_from_csv_and_handles_missing(tmp_path):
    from fpn_keras.visualization import CURVE_SIZE, _curve_series, plot_curves

    history = _history(tmp_path / "history.csv", ["NA", 0.1, 0.25])
    losses, metrics = _curve_series(history, None)
    assert [name for name, _ in losses] == ["box_loss", "cls_loss", "loss"]
    assert losses[0][1][0] == (1, 0.5)  # epochs are 1-based
    assert metrics == [("val_AP", [(2, 0.1), (3, 0.25)])]
    # no log yet: still a (blank-panel) picture of the expected size
    path = plot_curves(tmp_path / "missing.csv", None, tmp_path / "empty.png")
    with Image.open(path) as img:
        assert img.size == CURVE_SIZE
        pixels = np.asarray(img.convert("RGB"))
    assert all(_count(pixels, color) == 0 for color in LINE_COLORS)  # no lines, axes only
    assert np.any(np.all(pixels < 60, axis=-1))  # axes and titles drawn
