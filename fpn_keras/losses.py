"""Detection losses as pure functions (reduced by sum; callers normalise).

Shapes: B batch, N anchors, K classes.
"""

from keras import ops

from fpn_keras.boxes.iou import generalized_iou


def sigmoid_focal_loss(labels_one_hot, logits, alpha=0.25, gamma=2.0):
    """Element-wise focal loss, Eq. (5) of the RetinaNet paper (Lin et al., 2017).

    FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t). labels_one_hot, logits [..., K]
    -> [..., K]. Computed from logits for numerical stability.
    """
    logits = ops.cast(logits, "float32")
    labels = ops.cast(labels_one_hot, "float32")
    probs = ops.sigmoid(logits)
    # log(1 + exp(-|x|)) + max(x, 0) - x * z: BCE with logits.
    bce = ops.maximum(logits, 0.0) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits)))
    p_t = probs * labels + (1.0 - probs) * (1.0 - labels)
    alpha_t = alpha * labels + (1.0 - alpha) * (1.0 - labels)
    return alpha_t * ops.power(1.0 - p_t, gamma) * bce


def smooth_l1_loss(targets, predictions, beta=1.0 / 9):
    """Huber-style smooth L1 per element: [..., 4] -> [..., 4]. beta = 0 gives L1."""
    diff = ops.abs(ops.cast(predictions, "float32") - ops.cast(targets, "float32"))
    if beta < 1e-5:
        return diff
    return ops.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def giou_loss(target_boxes, predicted_boxes):
    """1 - GIoU for `xyxy` boxes [..., 4] -> [...]."""
    return 1.0 - generalized_iou(
        ops.cast(predicted_boxes, "float32"), ops.cast(target_boxes, "float32")
    )
