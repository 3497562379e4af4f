"""RetinaNet head (fpn_keras.models.retinanet): losses and detections on cases small
enough to check on paper."""

import math

import numpy as np

from fpn_keras.models.retinanet import RetinaNet

# Three anchors on one level and two images (K = 2):
#   a0 = [0, 0, 10, 10], a1 = [20, 20, 30, 30], a2 = [0, 0, 10, 22].
# Image 0: ground truth [0, 0, 10, 10] of class 1:
#   a0 IoU 1 -> positive, class 1; a1 IoU 0 -> negative; a2 IoU 100/220 = 0.45 -> ignored.
# Image 1: ground truth [20, 20, 30, 30] of class 0: a1 positive, a0 and a2 negative.
ANCHORS = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 22]], "float32")
GT_BOXES = np.array([[[0, 0, 10, 10], [-1, -1, -1, -1]],
                     [[20, 20, 30, 30], [-1, -1, -1, -1]]], "float32")
GT_LABELS = np.array([[1, -1], [0, -1]], "int32")


def _raw(cls_logits, box_deltas):
    """Per-image [3, K] logits and [3, 4] deltas -> the head's raw outputs."""
    cls_logits, box_deltas = np.asarray(cls_logits, "float32"), np.asarray(box_deltas, "float32")
    if cls_logits.ndim == 2:
        cls_logits, box_deltas = cls_logits[None], box_deltas[None]
    return {"cls_logits": {"P3": cls_logits}, "box_deltas": {"P3": box_deltas}, "anchors": {"P3": ANCHORS}}


def test_losses_by_hand_positive_normaliser_and_ignored_anchor():
    head = RetinaNet(num_classes=2, min_level=3, max_level=3, alpha=0.25, gamma=2.0, smooth_l1_beta=0.1)
    deltas = np.zeros((2, 3, 4), "float32")
    deltas[0, 0, 0] = 0.1  # |0.1 - 0| >= beta: 0.1 - 0.05 = 0.05
    deltas[0, 2] = 5.0  # ignored anchor: no box loss
    deltas[1, 0] = 5.0  # negative anchor: no box loss
    losses = head.compute_losses(_raw(np.zeros((2, 3, 2)), deltas), GT_BOXES, GT_LABELS, (64, 64))
    # All logits 0: p = 0.5, focal term alpha_t * (1 - 0.5)^2 * ln 2 per (anchor, class),
    # alpha_t 0.25 for the positive class, 0.75 for a negative one.
    # Image 0: a0 0.75 + 0.25, a1 0.75 + 0.75, a2 ignored -> 2.5.
    # Image 1: a1 0.25 + 0.75, a0 and a2 0.75 + 0.75 each -> 4.0.
    # Sum 6.5 * 0.25 * ln 2, divided by the 2 positive anchors of the batch.
    np.testing.assert_allclose(float(losses["cls_loss"]), 6.5 * 0.25 * math.log(2) / 2, rtol=1e-5)
    np.testing.assert_allclose(float(losses["box_loss"]), 0.05 / 2, rtol=1e-5)


def test_detect_by_hand_decodes_thresholds_and_pads():
    head = RetinaNet(num_classes=2, min_level=3, max_level=3, score_threshold=0.5, max_detections=3)
    logits = np.full((3, 2), -10.0, "float32")
    logits[0, 1] = 2.0  # a0, class 1: sigmoid(2) = 0.8808
    logits[1, 0] = -0.5  # a1, class 0: sigmoid(-0.5) = 0.38, under the 0.5 threshold
    deltas = np.zeros((3, 4), "float32")
    deltas[0] = [0.1, 0.0, 0.0, 0.0]  # dx = 0.1 of the width 10: shift right by 1 pixel
    out = head.detect(_raw(logits, deltas), (64, 64))
    np.testing.assert_allclose(out["boxes"][0, 0], [1, 0, 11, 10], atol=1e-4)
    np.testing.assert_allclose(out["scores"][0], [1 / (1 + math.exp(-2)), 0, 0], rtol=1e-5)
    np.testing.assert_array_equal(out["labels"][0], [1, -1, -1])
    assert int(out["num_detections"][0]) == 1


def test_norm_epsilon_reaches_the_towers_and_round_trips():
    head = RetinaNet(num_classes=2, channels=32, norm="group", norm_epsilon=1e-5, box_loss="giou")
    clone = RetinaNet.from_config(head.get_config())
    assert clone.head.cls_norms[0].epsilon == 1e-5 and clone.box_loss == "giou"


def test_clip_before_nms_false_clips_after_nms_and_drops_empty_boxes():
    # Canvas 15 x 15, deltas 0, class 0 scores a0 0.953 > a1 0.881 > a2 0.731.
    logits = np.full((3, 2), -10.0, "float32")
    logits[:, 0] = [3.0, 2.0, 1.0]
    raw = _raw(logits, np.zeros((3, 4), "float32"))
    # Clipped first (torchvision): a2 -> [0, 0, 10, 15] overlaps a0 by 100 / 150 > 0.5 and goes;
    # a1 (outside the canvas) becomes the empty box [15, 15, 15, 15] and stays.
    clipped = RetinaNet(num_classes=2, min_level=3, max_level=3, max_detections=3).detect(raw, (15, 15))
    np.testing.assert_allclose(clipped["boxes"][0, :2], [[0, 0, 10, 10], [15, 15, 15, 15]])
    # detectron2: NMS on [0, 0, 10, 22] (IoU 100 / 220 < 0.5: kept), then clipped; the empty a1 is
    # dropped and a2 moves up.
    head = RetinaNet(num_classes=2, min_level=3, max_level=3, max_detections=3, clip_before_nms=False)
    out = head.detect(raw, (15, 15))
    np.testing.assert_allclose(out["boxes"][0], [[0, 0, 10, 10], [0, 0, 10, 15], [-1, -1, -1, -1]])
    np.testing.assert_allclose(out["scores"][0], [1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-1)), 0], rtol=1e-5)
    np.testing.assert_array_equal(out["labels"][0], [0, 0, -1])
    assert int(out["num_detections"][0]) == 2
    assert RetinaNet.from_config(head.get_config()).clip_before_nms is False
