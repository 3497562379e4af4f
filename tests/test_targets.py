"""Training targets (fpn_keras.targets): anchor labels and Fast R-CNN RoI sampling,
checked by hand."""

import numpy as np
from keras import ops

from fpn_keras.matching import BACKGROUND, IGNORED, Matcher
from fpn_keras.targets import label_anchors, sample_rois


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


def test_roi_sampling_counts_classes_and_ground_truth_as_proposals():
    proposals = np.array([[[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60], [0, 0, 0, 0]]], "float32")
    valid = np.array([[True, True, True, False]])
    gt_boxes = np.array([[[0, 0, 10, 10], [-1, -1, -1, -1]]], "float32")
    gt_labels = np.array([[2, -1]], "int32")
    rois, cls, matched = sample_rois(proposals, valid, gt_boxes, gt_labels, Matcher(0.5, 0.5, False),
                                     num_samples=6, positive_fraction=0.5, seed=0)
    cls = ops.convert_to_numpy(cls)[0]
    # Foreground: two proposals + the ground truth itself (at most 3 of 6); background: one;
    # the invalid proposal and the padding box leave two slots unused.
    assert sorted(cls.tolist()) == [IGNORED, IGNORED, BACKGROUND, 2, 2, 2]
    assert np.all(ops.convert_to_numpy(matched)[0][cls == 2] == [0, 0, 10, 10])
