"""Pascal VOC AP, hand-computed cases (fpn_keras.evaluation.voc_eval)."""

import numpy as np
import pytest

from fpn_keras.evaluation.voc_eval import match_detections, voc07_ap, voc_area_ap, voc_metrics

# Class 0: 3 ground-truth boxes in 2 images (+ one difficult box in image 2).
GT_IDS = [1, 1, 2, 2]
GT_BOXES = [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10], [50, 50, 60, 60]]
GT_LABELS = [0, 0, 0, 0]
GT_DIFFICULT = [False, False, False, True]
# Five detections in score order TP, FP, TP, FP, TP, plus two that count neither way.
DET_IDS = [1, 2, 1, 1, 2, 2, 1]
DET_BOXES = [[0, 0, 10, 10],      # 0.9 TP (gt 0)
             [70, 70, 80, 80],    # 0.8 FP (nothing there)
             [20, 20, 30, 30],    # 0.7 TP (gt 1)
             [0, 0, 10, 10],      # 0.6 FP (gt 0 again: a duplicate)
             [0, 0, 10, 11],      # 0.5 TP (gt 2, IoU 10/11)
             [50, 50, 60, 60],    # 0.95 on the difficult box: ignored
             [30, 30, 40, 40]]    # class 1, no class-1 ground truth: FP of class 1
DET_SCORES = [0.9, 0.8, 0.7, 0.6, 0.5, 0.95, 0.4]
DET_LABELS = [0, 0, 0, 0, 0, 0, 1]

# precision 1, 1/2, 2/3, 2/4, 3/5 at recall 1/3, 1/3, 2/3, 2/3, 1.
# 11-point: r = 0..0.3 -> 1 (4 points), r = 0.4..0.6 -> 2/3 (3), r = 0.7..1 -> 0.6 (4).
AP07 = (4 * 1 + 3 * 2 / 3 + 4 * 0.6) / 11  # 0.7636
# Area: recall steps of 1/3 at monotone precision 1, 2/3, 0.6.
AP_AREA = (1 + 2 / 3 + 0.6) / 3  # 0.7556


def test_matching_tp_fp_difficult_and_duplicates():
    det_tp, det_fp, gt_matched = match_detections(GT_IDS, GT_BOXES, GT_LABELS, GT_DIFFICULT, DET_IDS,
                                                  DET_BOXES, DET_SCORES, DET_LABELS)
    np.testing.assert_array_equal(det_tp, [True, False, True, False, True, False, False])
    np.testing.assert_array_equal(det_fp, [False, True, False, True, False, False, True])
    np.testing.assert_array_equal(gt_matched, [True, True, True, False])


def test_hand_computed_11_point_and_area_ap():
    result = voc_metrics(GT_IDS, GT_BOXES, GT_LABELS, GT_DIFFICULT, DET_IDS, DET_BOXES, DET_SCORES,
                         DET_LABELS, num_classes=3, class_names=["cat", "dog", "bird"])
    cat, dog, bird = result["per_class"]
    assert cat["num_gt"] == 3  # the difficult box is not a positive
    assert cat["ap07"] == pytest.approx(AP07, abs=1e-12)
    assert cat["ap"] == pytest.approx(AP_AREA, abs=1e-12)
    # No ground truth: no AP, and left out of the means.
    assert dog == {"class": "dog", "label": 1, "num_gt": 0, "ap07": None, "ap": None}
    assert bird["ap"] is None
    assert result["mAP07"] == pytest.approx(AP07) and result["mAP"] == pytest.approx(AP_AREA)


def test_ap_definitions_on_curves():
    # Perfect detector: both 1.
    assert voc07_ap([1.0, 1.0], [0.5, 1.0]) == 1.0
    assert voc_area_ap([1.0, 1.0], [0.5, 1.0]) == 1.0
    # Half the objects found, all correct: area 0.5; 11-point 6/11 (r = 0 .. 0.5).
    assert voc_area_ap([1.0], [0.5]) == pytest.approx(0.5)
    assert voc07_ap([1.0], [0.5]) == pytest.approx(6 / 11)
    # Nothing detected.
    assert voc07_ap([], []) == 0.0 and voc_area_ap([], []) == 0.0


def test_below_threshold_is_fp_and_misaligned_rows_raise():
    # IoU 50/150 = 1/3 < 0.5.
    det_tp, det_fp, _ = match_detections([1], [[0, 0, 10, 10]], [0], None, [1], [[5, 0, 15, 10]], [0.9], [0])
    assert not det_tp[0] and det_fp[0]
    with pytest.raises(ValueError, match="det_scores"):
        match_detections([1], [[0, 0, 10, 10]], [0], None, [1], [[0, 0, 1, 1]], [0.9, 0.8], [0])
