"""Per-image failures: missed ground truth and confident false positives (fpn_keras.evaluation.failures)."""

import numpy as np

from fpn_keras.evaluation.failures import image_failures, worst_images


def _gt(image_id, box, category_id, iscrowd=0):
    x1, y1, x2, y2 = box
    return {"image_id": image_id, "category_id": category_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
            "iscrowd": iscrowd}


def _det(image_id, box, category_id, score):
    x1, y1, x2, y2 = box
    return {"image_id": image_id, "category_id": category_id, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}


GROUND_TRUTH = [_gt(1, (0, 0, 10, 10), 5), _gt(1, (20, 20, 30, 30), 5), _gt(1, (40, 40, 50, 50), 9),
                _gt(2, (0, 0, 10, 10), 5), _gt(2, (30, 30, 40, 40), 5, iscrowd=1),
                _gt(3, (0, 0, 10, 10), 9)]
RESULTS = [_det(1, (0, 0, 10, 10), 5, 0.9),      # TP
           _det(2, (0, 0, 10, 10), 9, 0.6),      # wrong class: FP, and image 2's box is missed
           _det(2, (30, 30, 40, 40), 5, 0.99),   # on the crowd box: neither
           _det(3, (0, 0, 10, 10), 9, 0.8),      # TP
           _det(3, (60, 60, 70, 70), 9, 0.7)]    # FP


def test_counts_per_image():
    failures = image_failures(GROUND_TRUTH, RESULTS, [1, 2, 3, 4])
    assert failures[1]["num_missed"] == 2 and failures[1]["top_fp_score"] == 0.0
    np.testing.assert_array_equal(failures[1]["gt_matched"], [True, False, False])
    assert failures[2]["num_missed"] == 1 and failures[2]["top_fp_score"] == 0.6
    np.testing.assert_array_equal(failures[2]["det_fp"], [True, False])  # crowd hit is no FP
    np.testing.assert_array_equal(failures[2]["gt_ignore"], [False, True])
    assert failures[3]["num_missed"] == 0 and failures[3]["top_fp_score"] == 0.7
    np.testing.assert_allclose(failures[3]["det_boxes"][1], [60, 60, 70, 70])  # xyxy
    assert failures[4]["num_missed"] == 0 and len(failures[4]["det_scores"]) == 0


def test_worst_images_order():
    failures = image_failures(GROUND_TRUTH, RESULTS, [1, 2, 3, 4])
    assert worst_images(failures, 4) == ([1, 2], [3, 2])
    assert worst_images(failures, 1) == ([1], [3])
