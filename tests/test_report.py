"""evaluate's pictures and tables from an evaluated CocoEvaluator (fpn_keras.evaluation.report, plots)."""

import numpy as np
import pytest
from PIL import Image

from fpn_keras.evaluation import plots, report
from test_per_class import CAT_AP, DOG_AP50, _evaluated


def _batches():
    """The 3 images of test_per_class as one pipeline batch, drawn 2x (image_scale 2)."""
    images = np.full((3, 256, 256, 3), 128.0, "float32")
    return [(images, {"image_id": np.array([1, 2, 3]), "image_scale": np.full(3, 2.0, "float32"),
                      "image_size": np.array([[200, 200]] * 3)})]


def _read(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_class_report_has_per_class_and_voc():
    evaluator, _ = _evaluated()
    classes, table = report.class_report(evaluator)
    cat, dog, bird = classes["per_class"]
    assert cat["ap"] == pytest.approx(CAT_AP) and dog["ap50"] == pytest.approx(DOG_AP50)
    assert bird["ap"] is None
    voc = classes["voc"]
    # VOC at IoU 0.5: cat precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> area 1/2 + 1/2 * 2/3;
    # 11-point (6 * 1 + 5 * 2/3) / 11. dog: recall 1/2 at precision 1 -> 1/2 and 6/11.
    assert voc["per_class"][0]["ap"] == pytest.approx(0.5 + 1 / 3)
    assert voc["per_class"][0]["ap07"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert voc["per_class"][1]["ap"] == pytest.approx(0.5)
    assert voc["per_class"][2]["ap"] is None
    assert voc["mAP"] == pytest.approx((0.5 + 1 / 3 + 0.5) / 2)
    assert "VOC2007 11-point" in table and "bird" in table


def test_pr_picture_is_a_png_of_the_expected_size(tmp_path):
    evaluator, _ = _evaluated()
    pixels = _read(report.pr_picture(evaluator, tmp_path / "pr.png"))
    width, height = plots.pr_figure_size(4)  # "all" + 3 classes
    assert pixels.shape == (height, width, 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # not a blank picture
    # the curve colour (matplotlib's tab:blue, 31 119 180) is drawn
    assert np.all(np.abs(pixels.astype(int) - [31, 119, 180]) < 8, axis=-1).sum() > 100


def test_worst_picture_is_a_png_of_the_expected_size(tmp_path):
    evaluator, _ = _evaluated()
    # image 1: the dog is missed; image 3: a cat where there is none (0.8)
    pixels = _read(report.worst_picture(evaluator, _batches(), tmp_path / "worst.png"))
    width, height = plots.worst_figure_size(1, 2)
    assert pixels.shape == (height, width, 3)
    assert np.all(pixels == 128, axis=-1).sum() > 2 * 100 * 100  # the two (gray) images are in it
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    # the missed dog (bottom right of image 1, top row) has a red outline; the cat box (red
    # too: class colour 0) is in the top left, the false positive in the bottom row
    assert red[height // 4:height // 2, width * 3 // 5:].sum() > 20
    assert red[:height // 4, width * 3 // 5:].sum() == 0


def test_collect_images_crops_padding_and_keeps_scale():
    found = report.collect_images(_batches(), [3, 1, 99])
    assert set(found) == {1, 3}
    image, scale = found[3]
    assert image.shape == (200, 200, 3) and image.dtype == np.uint8 and scale == 2.0


def test_write_report_files_and_class_agnostic_runs(tmp_path):
    evaluator, _ = _evaluated()
    classes, table, files = report.write_report(evaluator, _batches(), tmp_path)
    assert set(classes) == {"per_class", "voc"} and "cat" in table
    assert files == [report.PR_CURVES_FILE, report.WORST_IMAGES_FILE]
    assert all((tmp_path / name).is_file() for name in files)
    # proposals (the RPN's class-agnostic COCO run) have no classes to report
    evaluator.evaluate(verbose=False, class_agnostic=True)
    classes, table, files = report.write_report(evaluator, _batches(), tmp_path / "rpn")
    assert classes == {} and files == [] and "class-agnostic" in table
