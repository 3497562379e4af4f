"""fpn_keras.postprocess: select_detections and the one inference tail, by hand."""

import numpy as np

from fpn_keras.postprocess import finalize_detections, select_detections


def test_select_detections_thresholds_suppresses_per_class_and_pads():
    boxes = np.array([[[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]]], "float32")
    scores = np.array([[0.9, 0.8, 0.7, 0.01]], "float32")
    classes = np.array([[0, 0, 1, 0]], "int32")
    out = select_detections(boxes, scores, classes, iou_threshold=0.5, max_detections=4, score_threshold=0.05)
    # box 1 overlaps box 0 (IoU 9/11 = 0.82, same class): suppressed; box 2 is another class: kept;
    # box 3 is under the score threshold.
    np.testing.assert_allclose(out["scores"][0], [0.9, 0.7, 0, 0])
    np.testing.assert_array_equal(out["labels"][0], [0, 1, -1, -1])
    np.testing.assert_allclose(out["boxes"][0], [[0, 0, 10, 10], [0, 0, 10, 10], [-1] * 4, [-1] * 4])
    assert int(out["num_detections"][0]) == 2


def _detections():
    return {"boxes": np.array([[[10, 20, 30, 40], [-1, -1, -1, -1]]], "float32"),
            "scores": np.array([[0.9, 0.0]], "float32"), "labels": np.array([[2, -1]], "int32"),
            "num_detections": np.array([1], "int32")}


def test_finalize_on_the_canvas_converts_the_format_and_keeps_padding():
    out = finalize_detections(_detections(), "yxyx", (64, 64))
    np.testing.assert_allclose(out["boxes"][0], [[20, 10, 40, 30], [-1, -1, -1, -1]])
    out = finalize_detections(_detections(), "rel_xyxy", (64, 64))
    np.testing.assert_allclose(out["boxes"][0, 0], [10 / 64, 20 / 64, 30 / 64, 40 / 64])


def test_finalize_maps_back_to_the_original_pixels_and_clips():
    # canvas 64x64 from an image of 100 x 50 (h x w): scale 0.64 -> box / 0.64, clipped to w 50 / h 100
    out = finalize_detections(_detections(), "xyxy", (64, 64), scales=np.array([0.64], "float32"),
                              original_sizes=np.array([[100.0, 50.0]], "float32"))
    np.testing.assert_allclose(out["boxes"][0, 0], [15.625, 31.25, 46.875, 62.5], rtol=1e-6)
    out = finalize_detections(_detections(), "rel_xyxy", (64, 64), scales=np.array([0.25], "float32"),
                              original_sizes=np.array([[100.0, 50.0]], "float32"))
    np.testing.assert_allclose(out["boxes"][0, 0], [40 / 50, 80 / 100, 50 / 50, 100 / 100], rtol=1e-6)
    np.testing.assert_array_equal(out["labels"][0], [2, -1])
