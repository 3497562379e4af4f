"""Per-class COCO numbers from pycocotools' arrays, on a hand-built case (fpn_keras.evaluation.per_class)."""

import numpy as np
import pytest

from fpn_keras.evaluation import CocoEvaluator
from fpn_keras.evaluation.per_class import format_per_class, per_class_metrics, pr_curves

PAD = [-1, -1, -1, -1]
# 3 images; "cat" (label 0): one box in images 1 and 2; "dog" (1): one box in images 1 and 3;
# "bird" (2): no ground truth.
GT_BOXES = np.array([[[10, 10, 50, 50], [60, 60, 100, 100]],
                     [[0, 0, 40, 40], PAD],
                     [[0, 0, 40, 40], PAD]], np.float32)
GT_LABELS = np.array([[0, 1], [0, -1], [1, -1]])
# cat: exact hit in image 1 (0.9), a box in image 3 where no cat is (0.8), exact hit in
#   image 2 (0.7): TP, FP, TP at every IoU threshold.
# dog: image 3's box shifted by 8 px (IoU 32*40 / (3200 - 1280) = 2/3, 0.95): TP for IoU
#   thresholds 0.50..0.65 (4 of 10), FP above; image 1's dog is missed.
# bird: one detection, no ground truth.
DET_BOXES = np.array([[[10, 10, 50, 50], PAD, PAD],
                      [[0, 0, 40, 40], PAD, PAD],
                      [[70, 70, 90, 90], [8, 0, 48, 40], [0, 50, 20, 70]]], np.float32)
DET_SCORES = np.array([[0.9, 0, 0], [0.7, 0, 0], [0.8, 0.95, 0.5]], np.float32)
DET_LABELS = np.array([[0, -1, -1], [0, -1, -1], [0, 1, 2]])

# cat: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; COCO's interpolated precision is 1 at the
#   51 recall thresholds 0..0.50 and 2/3 at the 50 above.
CAT_AP = (51 * 1 + 50 * 2 / 3) / 101
# dog: precision 1 at recall thresholds 0..0.50, 0 above, at 4 of the 10 IoU thresholds.
DOG_AP50 = 51 / 101
DOG_AP = 4 / 10 * DOG_AP50


def _evaluated():
    evaluator = CocoEvaluator(class_names=["cat", "dog", "bird"], category_ids=[3, 7, 11])
    evaluator.add(GT_BOXES, GT_LABELS, DET_BOXES, DET_SCORES, DET_LABELS, image_ids=[1, 2, 3])
    metrics = evaluator.evaluate(verbose=False)
    return evaluator, metrics


def test_per_class_numbers_hand_computed_and_equal_to_pycocotools_arrays():
    evaluator, metrics = _evaluated()
    cat, dog, bird = per_class_metrics(evaluator.coco_eval)
    assert (cat["class"], cat["category_id"], cat["num_gt"]) == ("cat", 3, 2)
    assert cat["ap"] == pytest.approx(CAT_AP, abs=1e-12) and cat["ap50"] == pytest.approx(CAT_AP, abs=1e-12)
    assert cat["ar100"] == pytest.approx(1.0)
    assert dog["ap"] == pytest.approx(DOG_AP, abs=1e-12) and dog["ap50"] == pytest.approx(DOG_AP50, abs=1e-12)
    assert dog["ar100"] == pytest.approx(4 / 10 * 0.5)  # recall 1/2 at 4 thresholds
    # pycocotools leaves -1 for a class without ground truth: None here.
    assert bird == {"class": "bird", "category_id": 11, "ap": None, "ap50": None, "ar100": None, "num_gt": 0}
    # The same numbers straight from the precision array (area all, maxDets 100) ...
    precision = evaluator.coco_eval.eval["precision"]
    for k, row in enumerate((cat, dog)):
        assert row["ap"] == pytest.approx(precision[:, :, k, 0, 2].mean(), abs=1e-12)
        assert row["ap50"] == pytest.approx(precision[0, :, k, 0, 2].mean(), abs=1e-12)
    # ... and COCO's overall AP is their mean.
    assert metrics["AP"] == pytest.approx((CAT_AP + DOG_AP) / 2, abs=1e-12)


def test_pr_curves_and_table():
    evaluator, _ = _evaluated()
    recall, curves, mean = pr_curves(evaluator.coco_eval, 0.5)
    assert recall.shape == (101,) and set(curves) == {3, 7, 11}
    np.testing.assert_allclose(curves[3][:51], 1.0)
    np.testing.assert_allclose(curves[3][51:], 2 / 3)
    np.testing.assert_allclose(curves[7], np.r_[np.ones(51), np.zeros(50)])
    assert curves[11] is None
    np.testing.assert_allclose(mean, (curves[3] + curves[7]) / 2)
    table = format_per_class(per_class_metrics(evaluator.coco_eval))
    bird_line = [line for line in table.splitlines() if line.strip().startswith("bird")][0]
    assert bird_line.split()[1:] == ["-", "-", "-", "0"]
    assert f"{CAT_AP:.3f}" in table


def test_class_agnostic_run_is_refused():
    evaluator = CocoEvaluator(class_names=["cat", "dog", "bird"])
    evaluator.add(GT_BOXES, GT_LABELS, DET_BOXES, DET_SCORES, DET_LABELS)
    evaluator.evaluate(verbose=False, class_agnostic=True)
    with pytest.raises(ValueError, match="useCats"):
        per_class_metrics(evaluator.coco_eval)
