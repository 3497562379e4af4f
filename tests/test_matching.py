import numpy as np
import pytest
from keras import ops

from fpn_keras.matching import Matcher
from fpn_keras.targets import BACKGROUND, IGNORED, label_anchors

IOU = np.array([[
    [0.70, 0.10],  # >= 0.5 with gt 0 -> positive, gt 0
    [0.45, 0.20],  # between 0.4 and 0.5 -> ignored
    [0.10, 0.30],  # < 0.4 -> negative
    [0.20, 0.35],  # gt 1's best anchor -> positive only with low-quality matches
    [0.00, 0.00],  # no overlap -> negative
]], "float32")


def test_matcher_decisions_hand_computed():
    idx, labels = Matcher(0.5, 0.4, allow_low_quality_matches=False)(IOU, np.array([[True, True]]))
    assert ops.convert_to_numpy(labels).tolist() == [[1, -1, 0, 0, 0]]
    assert ops.convert_to_numpy(idx)[0, [0, 1, 3]].tolist() == [0, 0, 1]
    _, labels = Matcher(0.5, 0.4, allow_low_quality_matches=True)(IOU, np.array([[True, True]]))
    assert ops.convert_to_numpy(labels).tolist() == [[1, -1, 0, 1, 0]]


def test_invalid_ground_truth_never_matches():
    idx, labels = Matcher(0.5, 0.4, True)(IOU, np.array([[True, False]]))
    assert ops.convert_to_numpy(labels).tolist() == [[1, -1, 0, 0, 0]]
    assert np.all(ops.convert_to_numpy(idx) == 0)


def test_thresholds_validated():
    with pytest.raises(ValueError, match="negative_threshold"):
        Matcher(0.4, 0.5)


def test_label_anchors_with_degenerate_box_and_padding():
    anchors = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], "float32")
    gt_boxes = np.array([[[0, 0, 10, 10], [20, 20, 20, 20], [-1, -1, -1, -1]]], "float32")
    gt_labels = np.array([[3, 1, -1]], "int32")
    cls, matched = label_anchors(anchors, gt_boxes, gt_labels, Matcher(0.5, 0.4, True))
    # Anchor 0 matches class 3; the zero-area box at anchor 1 is never a positive.
    assert ops.convert_to_numpy(cls).tolist() == [[3, BACKGROUND, BACKGROUND]]
    np.testing.assert_allclose(ops.convert_to_numpy(matched)[0, 0], [0, 0, 10, 10])
    cls, _ = label_anchors(anchors, gt_boxes[:, :1] * 0 + np.array([0, 0, 12, 10], "float32"),
                           gt_labels[:, :1], Matcher(0.9, 0.4, False))
    # IoU 100/120 = 0.83: between 0.4 and 0.9 -> ignored.
    assert ops.convert_to_numpy(cls)[0, 0] == IGNORED
