import math

import numpy as np
import pytest
from keras import ops

from fpn_keras.boxes import BoxCoder, clip_boxes, from_xyxy, generalized_iou, pairwise_iou, to_xyxy
from fpn_keras.boxes.convert import check_format


def np_(x):
    return ops.convert_to_numpy(x)


def test_pairwise_iou_hand_computed_3x4():
    boxes1 = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 0, 0]], "float32")
    boxes2 = np.array([[0, 0, 10, 10], [0, 0, 5, 5], [10, 10, 20, 20], [-5, -5, 5, 5]], "float32")
    expected = np.array([
        [1.0, 0.25, 0.0, 25 / 175],      # A: itself, a quarter, touching corner, 25/(100+100-25)
        [25 / 175, 0.0, 25 / 175, 0.0],  # B: 5x5 overlaps, corner touches
        [0.0, 0.0, 0.0, 0.0],            # zero-area box: IoU 0, never NaN
    ])
    np.testing.assert_allclose(np_(pairwise_iou(boxes1, boxes2)), expected, atol=1e-6)


def test_pairwise_iou_batched_broadcast():
    anchors = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], "float32")
    gt = np.array([[[0, 0, 10, 10]], [[5, 5, 15, 15]]], "float32")  # [B=2, M=1, 4]
    iou = np_(pairwise_iou(anchors[None], gt))
    assert iou.shape == (2, 2, 1)
    np.testing.assert_allclose(iou[:, :, 0], [[1.0, 25 / 175], [25 / 175, 1.0]], atol=1e-6)


def test_generalized_iou_hand_computed():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], "float32")
    b = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], "float32")
    # Second pair: IoU 0, enclosing box 30x10 = 300, union 200 -> 0 - 100/300.
    np.testing.assert_allclose(np_(generalized_iou(a, b)), [1.0, -1 / 3], atol=1e-6)


def test_coder_hand_computed_and_round_trip():
    anchors = np.array([[0, 0, 10, 10]], "float32")  # centre (5, 5), size 10 x 10
    boxes = np.array([[2, 4, 12, 24]], "float32")  # centre (7, 14), size 10 x 20
    coder = BoxCoder()
    np.testing.assert_allclose(np_(coder.encode(boxes, anchors)), [[0.2, 0.9, 0.0, math.log(2)]], atol=1e-6)
    weighted = BoxCoder(weights=(10, 10, 5, 5))
    deltas = np_(weighted.encode(boxes, anchors))
    np.testing.assert_allclose(deltas, [[2.0, 9.0, 0.0, 5 * math.log(2)]], atol=1e-5)
    np.testing.assert_allclose(np_(weighted.decode(deltas, anchors)), boxes, atol=1e-4)

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (50, 2))
    wh = rng.uniform(1, 50, (50, 2))
    random_boxes = np.concatenate([xy, xy + wh], -1).astype("float32")
    random_anchors = np.concatenate([xy + 3, xy + 3 + wh[::-1]], -1).astype("float32")
    decoded = coder.decode(coder.encode(random_boxes, random_anchors), random_anchors)
    np.testing.assert_allclose(np_(decoded), random_boxes, atol=1e-3)


def test_coder_clamps_huge_deltas_and_handles_degenerate_boxes():
    coder = BoxCoder()
    anchors = np.array([[0, 0, 16, 16]], "float32")
    boxes = np_(coder.decode(np.array([[0, 0, 100.0, 100.0]], "float32"), anchors))
    assert np.all(np.isfinite(boxes))
    # Width clamped to 16 * exp(log(1000 / 16)) = 1000.
    np.testing.assert_allclose(boxes[0, 2] - boxes[0, 0], 1000.0, rtol=1e-4)
    deltas = np_(coder.encode(np.array([[5, 5, 5, 5]], "float32"), anchors))
    assert np.all(np.isfinite(deltas))


def test_format_conversion_round_trip_and_clip():
    xyxy = np.array([[10, 20, 30, 60]], "float32")
    np.testing.assert_allclose(np_(from_xyxy(xyxy, "yxyx")), [[20, 10, 60, 30]])
    np.testing.assert_allclose(np_(from_xyxy(xyxy, "xywh")), [[10, 20, 20, 40]])
    np.testing.assert_allclose(np_(from_xyxy(xyxy, "center_xywh")), [[20, 40, 20, 40]])
    np.testing.assert_allclose(np_(to_xyxy(np.array([[20, 40, 20, 40]], "float32"), "center_xywh")), xyxy)
    np.testing.assert_allclose(
        np_(to_xyxy(np.array([[0.1, 0.2, 0.3, 0.6]], "float32"), "rel_xyxy", height=100, width=100)),
        xyxy, atol=1e-4)
    clipped = np_(clip_boxes(np.array([[-5, 10, 120, 90]], "float32"), 80, 100))
    np.testing.assert_allclose(clipped, [[0, 10, 100, 80]])
    with pytest.raises(ValueError, match="bounding_box_format must be one of"):
        check_format("xyhw")
