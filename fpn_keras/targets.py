"""Training targets as pure functions on padded tensors.

Shapes: B batch, N anchors, M ground-truth boxes (padded with label -1).
Targets use the one encoding of `fpn_keras.matching`: class id >= 0,
BACKGROUND (-1), IGNORED (-2).
"""

import keras
from keras import ops

from fpn_keras.boxes.convert import box_area
from fpn_keras.boxes.iou import pairwise_iou
from fpn_keras.matching import BACKGROUND, IGNORED, sample_balanced


def valid_ground_truth(gt_boxes, gt_labels):
    """[B, M] bool: real (label >= 0) boxes with positive area."""
    return (gt_labels >= 0) & (box_area(gt_boxes) > 0.0)


def label_anchors(anchors, gt_boxes, gt_labels, matcher):
    """Match anchors to ground truth.

    Args:
        anchors: [N, 4] xyxy.
        gt_boxes: [B, M, 4] xyxy; gt_labels: [B, M] int, -1 = padding.
        matcher: a `Matcher`.

    Returns:
        cls_targets [B, N] int32: class id of positives, BACKGROUND (-1) for
            negatives, IGNORED (-2) in the ignore band.
        matched_boxes [B, N, 4]: the matched ground-truth box of every anchor
            (meaningful only where cls_targets >= 0).
    """
    gt_labels = ops.cast(gt_labels, "int32")
    gt_valid = valid_ground_truth(gt_boxes, gt_labels)
    iou = pairwise_iou(anchors[None], gt_boxes)  # [B, N, M]
    matches = matcher(iou, gt_valid)
    matched_boxes, matched_labels = _gather_matched(matches, gt_boxes, gt_labels)
    return ops.cast(ops.where(matches >= 0, matched_labels, matches), "int32"), matched_boxes


def _gather_matched(matches, gt_boxes, gt_labels):
    """The ground-truth box and label of each match (of gt 0 where there is none)."""
    index = ops.maximum(matches, 0)
    return (ops.take_along_axis(gt_boxes, index[..., None], axis=1),
            ops.take_along_axis(gt_labels, index, axis=1))


def check_labels(gt_labels, num_classes):
    """Fails the step if any label >= num_classes (or < -1); returns the labels.

    Under TensorFlow this is a graph assertion, so it also fires inside
    `model.fit`; the message names the offending value and `num_classes`.
    """
    message = (
        f"ground-truth labels must be in [0, num_classes) = [0, {num_classes}) "
        "(or -1 for padding); received label value"
    )
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        labels = tf.convert_to_tensor(gt_labels)
        bad = tf.logical_or(labels >= num_classes, labels < -1)
        first_bad = tf.reduce_max(tf.where(bad, tf.abs(labels), -1))
        check = tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [message, first_bad])
        with tf.control_dependencies([check]):
            return tf.identity(labels)
    if backend == "jax":
        import jax
        import numpy as np

        def _raise_if_bad(labels):
            labels = np.asarray(labels)
            bad = labels[(labels >= num_classes) | (labels < -1)]
            if bad.size:
                raise ValueError(f"{message} {int(bad.flat[0])}")

        jax.debug.callback(_raise_if_bad, gt_labels)
        return gt_labels
    labels = ops.convert_to_numpy(gt_labels)
    bad = labels[(labels >= num_classes) | (labels < -1)]
    if bad.size:
        raise ValueError(f"{message} {int(bad.flat[0])}")
    return gt_labels


def sample_rois(proposals, proposal_valid, gt_boxes, gt_labels, matcher,
                num_samples=512, positive_fraction=0.25, seed=None):
    """Fast R-CNN training RoIs (detectron2's `label_and_sample_proposals`), static shapes.

    The ground-truth boxes are added to the proposals, every candidate is matched
    (IoU >= 0.5 foreground, below background), and `num_samples` RoIs are drawn with
    at most `positive_fraction` foreground.

    Args:
        proposals [B, P, 4] xyxy, proposal_valid [B, P] bool, gt_boxes [B, M, 4],
        gt_labels [B, M] (-1 padding).

    Returns:
        rois [B, S, 4]; cls_targets [B, S] int32 (class id, BACKGROUND for a
        sampled background RoI, IGNORED for an unused slot); matched_boxes [B, S, 4].
    """
    gt_labels = ops.cast(gt_labels, "int32")
    gt_valid = valid_ground_truth(gt_boxes, gt_labels)
    candidates = ops.concatenate([proposals, gt_boxes], axis=1)  # [B, P + M, 4]
    candidate_valid = ops.concatenate([proposal_valid, gt_valid], axis=1)
    iou = pairwise_iou(candidates, gt_boxes)  # [B, P + M, M]
    matches = ops.where(candidate_valid, matcher(iou, gt_valid), IGNORED)
    foreground, background = sample_balanced(matches, num_samples, positive_fraction, seed)

    total = candidates.shape[1]
    k = min(num_samples, total) if isinstance(total, int) else num_samples
    # Sampled foreground first, then sampled background, then unused slots.
    order = ops.cast(ops.arange(total), "float32") / (2.0 * total)
    priority = ops.where(foreground, 2.0, ops.where(background, 1.0, 0.0)) - order
    _, picked = ops.top_k(priority, k=k)  # [B, S]
    picked_fg = ops.take_along_axis(foreground, picked, axis=1)
    picked_bg = ops.take_along_axis(background, picked, axis=1)
    rois = ops.take_along_axis(candidates, picked[..., None], axis=1)
    matched_boxes, matched_labels = _gather_matched(
        ops.take_along_axis(matches, picked, axis=1), gt_boxes, gt_labels)
    cls_targets = ops.where(picked_fg, matched_labels, ops.where(picked_bg, BACKGROUND, IGNORED))
    return rois, ops.cast(cls_targets, "int32"), matched_boxes
