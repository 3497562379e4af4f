import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from fpn_keras.boxes import batched_nms


def random_boxes(rng, batch, n, size=100.0):
    xy = rng.uniform(0, size, (batch, n, 2))
    wh = rng.uniform(5, 40, (batch, n, 2))
    return np.concatenate([xy, xy + wh], -1).astype("float32")


def test_nms_hand_computed():
    boxes = np.array([[[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]]], "float32")
    scores = np.array([[0.9, 0.8, 0.7, 0.1]], "float32")
    # Box 1 overlaps box 0 with IoU 90/110 = 0.82 -> suppressed; box 3 scores below the threshold.
    for implementation in ("generic", "tf"):
        indices, num = batched_nms(boxes, scores, iou_threshold=0.5, max_output_size=4,
                                   score_threshold=0.2, implementation=implementation)
        assert ops.convert_to_numpy(indices).tolist() == [[0, 2, -1, -1]]
        assert ops.convert_to_numpy(num).tolist() == [2]


def test_per_class_nms_keeps_overlapping_boxes_of_other_classes():
    boxes = np.array([[[0, 0, 10, 10], [1, 0, 11, 10]]], "float32")
    scores = np.array([[0.9, 0.8]], "float32")
    classes = np.array([[0, 1]], "int32")
    for implementation in ("generic", "tf"):
        indices, num = batched_nms(boxes, scores, classes, 0.5, 5, implementation=implementation)
        assert ops.convert_to_numpy(indices).tolist() == [[0, 1, -1, -1, -1]]
        assert ops.convert_to_numpy(num).tolist() == [2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generic_and_tf_match_tf_image_nms_on_random_boxes(seed):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 3, 300)
    scores = rng.uniform(0, 1, (3, 300)).astype("float32")
    classes = rng.integers(0, 4, (3, 300)).astype("int32")
    generic, num_generic = batched_nms(boxes, scores, classes, 0.5, 50, 0.3, implementation="generic")
    fast, num_fast = batched_nms(boxes, scores, classes, 0.5, 50, 0.3, implementation="tf")
    np.testing.assert_array_equal(ops.convert_to_numpy(generic), ops.convert_to_numpy(fast))
    np.testing.assert_array_equal(ops.convert_to_numpy(num_generic), ops.convert_to_numpy(num_fast))
    # Reference: per class, tf.image.non_max_suppression, merged by score.
    for b in range(3):
        kept = []
        for c in range(4):
            idx = np.flatnonzero(classes[b] == c)
            sel = tf.image.non_max_suppression(boxes[b, idx], scores[b, idx], 300, 0.5, 0.3).numpy()
            kept.extend(idx[sel].tolist())
        kept = sorted(kept, key=lambda i: -scores[b, i])[:50]
        got = ops.convert_to_numpy(generic)[b]
        assert got[: len(kept)].tolist() == kept
        assert np.all(got[len(kept):] == -1)


def test_nms_rejects_unknown_implementation():
    with pytest.raises(ValueError, match="implementation"):
        batched_nms(np.zeros((1, 2, 4), "float32"), np.zeros((1, 2), "float32"), implementation="cuda")


def test_suppression_chains_follow_greedy_order():
    """A overlaps B, B overlaps C, A does not overlap C: greedy keeps A and C (B is
    suppressed by A, so it cannot suppress C); D overlaps C and goes."""
    boxes = np.array([[[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10], [12, 0, 22, 10],
                       [50, 50, 60, 60]]], "float32")  # IoU of neighbours 60/140 = 0.43; of A and C 20/180
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]], "float32")
    for implementation in ("generic", "tf"):
        indices, num = batched_nms(boxes, scores, None, 0.4, 5, implementation=implementation)
        assert ops.convert_to_numpy(indices).tolist() == [[0, 2, 4, -1, -1]], implementation
        assert ops.convert_to_numpy(num).tolist() == [3]


def test_generic_nms_matches_the_tf_kernel_on_crowded_boxes_and_stops_at_max_output_size():
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, 2, 200, size=60.0)  # crowded: long suppression chains
    scores = rng.uniform(0, 1, (2, 200)).astype("float32")
    for max_output_size in (5, 80, 300):
        generic, num_generic = batched_nms(boxes, scores, None, 0.5, max_output_size, 0.1,
                                           implementation="generic")
        fast, num_fast = batched_nms(boxes, scores, None, 0.5, max_output_size, 0.1, implementation="tf")
        assert ops.convert_to_numpy(generic).shape == (2, max_output_size)
        np.testing.assert_array_equal(ops.convert_to_numpy(generic), ops.convert_to_numpy(fast))
        np.testing.assert_array_equal(ops.convert_to_numpy(num_generic), ops.convert_to_numpy(num_fast))
