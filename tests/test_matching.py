import numpy as np
import pytest
from keras import ops

from fpn_keras.matching import BACKGROUND, IGNORED, Matcher, sample_balanced

IOU = np.array([[
    [0.70, 0.10],  # >= 0.5 with gt 0 -> positive, gt 0
    [0.45, 0.20],  # between 0.4 and 0.5 -> ignored
    [0.10, 0.30],  # < 0.4 -> negative
    [0.20, 0.35],  # gt 1's best anchor -> positive only with low-quality matches
    [0.00, 0.00],  # no overlap -> negative
]], "float32")


B, I = BACKGROUND, IGNORED


def test_matcher_decisions_hand_computed():
    matches = Matcher(0.5, 0.4, allow_low_quality_matches=False)(IOU, np.array([[True, True]]))
    assert ops.convert_to_numpy(matches).tolist() == [[0, I, B, B, B]]
    matches = Matcher(0.5, 0.4, allow_low_quality_matches=True)(IOU, np.array([[True, True]]))
    assert ops.convert_to_numpy(matches).tolist() == [[0, I, B, 1, B]]


def test_invalid_ground_truth_never_matches():
    matches = Matcher(0.5, 0.4, True)(IOU, np.array([[True, False]]))
    # gt 1 is invalid: anchor 3 (its best) stays background, and no anchor points at it.
    assert ops.convert_to_numpy(matches).tolist() == [[0, I, B, B, B]]


def test_encoding_constants_are_distinct_negatives():
    assert BACKGROUND < 0 and IGNORED < 0 and BACKGROUND != IGNORED


def test_thresholds_validated():
    with pytest.raises(ValueError, match="negative_threshold"):
        Matcher(0.4, 0.5)


def test_balanced_sampling_counts_and_positive_fraction():
    labels = np.full((3, 6000), BACKGROUND, "int32")
    labels[0, :1000] = 7       # plenty of positives: 128 + 128
    labels[1, :10] = 0         # few positives: 10 + 246
    labels[2, :] = IGNORED         # only 5 negatives, 2 positives, the rest ignored
    labels[2, :2] = 3
    labels[2, 10:15] = BACKGROUND
    pos, neg = sample_balanced(labels, 256, 0.5, seed=0)
    pos, neg = ops.convert_to_numpy(pos), ops.convert_to_numpy(neg)
    assert pos.sum(1).tolist() == [128, 10, 2]
    assert neg.sum(1).tolist() == [128, 246, 5]
    assert np.all(labels[pos] >= 0) and np.all(labels[neg] == BACKGROUND)
    assert not np.any(pos & neg)
