"""One batched, padded, class-aware non-maximum suppression.

Shapes: B batch, N candidate boxes, K = `max_output_size` kept boxes.

The generic path is exact greedy NMS in `keras.ops` (runs under TF, JAX and
XLA): sort by score, one [N, N] IoU matrix, then N suppression steps in a
`fori_loop`. Under the TensorFlow backend the same greedy algorithm runs as
the `NonMaxSuppressionV5` kernel, which gives the same result far faster on CPU
and converts to the TFLite builtin NON_MAX_SUPPRESSION_V5.

Per-class NMS uses the offset trick (torchvision's `batched_nms`): boxes of
class c are shifted by c * (max coordinate + 1), so boxes of different classes
never overlap and one class-agnostic NMS does the work of K.
"""

import keras
from keras import ops

from fpn_keras.boxes.iou import pairwise_iou


def batched_nms(
    boxes,
    scores,
    classes=None,
    iou_threshold=0.5,
    max_output_size=100,
    score_threshold=float("-inf"),
    implementation="auto",
):
    """Greedy NMS per image (and per class when `classes` is given).

    Args:
        boxes: [B, N, 4] `xyxy`.
        scores: [B, N]; boxes with score <= `score_threshold` are never kept.
        classes: optional [B, N] int; NMS is then done separately per class.
        implementation: "auto" (TF kernel under the TF backend, else generic),
            "tf" or "generic".

    Returns:
        (indices [B, K] int32 into N, padded with -1, in descending score order;
        num_valid [B] int32).
    """
    boxes = ops.cast(boxes, "float32")
    scores = ops.cast(scores, "float32")
    if classes is not None:
        # Shift each class into its own region of the plane.
        offset = ops.max(boxes) + 1.0
        boxes = boxes + ops.cast(classes, "float32")[..., None] * offset
    if implementation == "auto":
        implementation = "tf" if keras.backend.backend() == "tensorflow" else "generic"
    if implementation == "tf":
        return _nms_tensorflow(boxes, scores, iou_threshold, max_output_size, score_threshold)
    if implementation == "generic":
        return _nms_generic(boxes, scores, iou_threshold, max_output_size, score_threshold)
    raise ValueError(
        f"implementation must be 'auto', 'tf' or 'generic', received {implementation!r}"
    )


def _nms_generic(boxes, scores, iou_threshold, max_output_size, score_threshold):
    num_boxes = ops.shape(boxes)[1]
    # Sort every image's candidates by descending score.
    order = ops.argsort(-scores, axis=-1)  # [B, N]
    boxes = ops.take_along_axis(boxes, order[..., None], axis=1)
    scores = ops.take_along_axis(scores, order, axis=1)
    iou = pairwise_iou(boxes, boxes)  # [B, N, N]
    positions = ops.arange(num_boxes)
    keep = scores > score_threshold  # [B, N]

    def suppress(i, keep):
        # Box i (if still kept) suppresses every later box it overlaps too much.
        overlaps = ops.take(iou, i, axis=1) > iou_threshold  # [B, N]
        kept_i = ops.take(keep, i, axis=1)[:, None]  # [B, 1]
        later = (positions > i)[None, :]
        return ops.logical_and(keep, ops.logical_not(overlaps & later & kept_i))

    keep = ops.fori_loop(0, num_boxes, suppress, keep)
    return _first_kept(keep, order, max_output_size)


def _first_kept(keep, order, max_output_size):
    """Indices (into the unsorted input) of the first `max_output_size` kept boxes."""
    num_boxes = ops.shape(keep)[1]
    k = min(max_output_size, num_boxes) if isinstance(num_boxes, int) else max_output_size
    rank = ops.where(keep, num_boxes - ops.arange(num_boxes)[None, :], -1)
    _, sorted_positions = ops.top_k(rank, k=k)  # kept positions, ascending
    num_valid = ops.minimum(ops.sum(ops.cast(keep, "int32"), axis=1), k)
    indices = ops.take_along_axis(order, sorted_positions, axis=1)
    valid = ops.arange(k)[None, :] < num_valid[:, None]
    indices = ops.where(valid, ops.cast(indices, "int32"), -1)
    return _pad_to(indices, max_output_size), ops.cast(num_valid, "int32")


def _pad_to(indices, size):
    k = ops.shape(indices)[1]
    if isinstance(k, int) and k < size:
        indices = ops.pad(indices, [[0, 0], [0, size - k]], constant_values=-1)
    return indices


def _nms_tensorflow(boxes, scores, iou_threshold, max_output_size, score_threshold):
    import tensorflow as tf

    def one_image(args):
        image_boxes, image_scores = args
        indices, _, num_valid = tf.raw_ops.NonMaxSuppressionV5(
            boxes=image_boxes,
            scores=image_scores,
            max_output_size=max_output_size,
            iou_threshold=iou_threshold,
            score_threshold=score_threshold,
            soft_nms_sigma=0.0,
            pad_to_max_output_size=True,
        )
        valid = tf.range(max_output_size) < num_valid
        return tf.where(valid, indices, -1), num_valid

    # The TF kernel keeps boxes with score > threshold; -inf is not accepted.
    score_threshold = max(float(score_threshold), -3.0e38)
    batch = boxes.shape[0]
    if isinstance(batch, int) and batch <= 8:
        # Static batch (TFLite, fixed-size exports): unrolled, no TensorList ops.
        results = [one_image((boxes[i], scores[i])) for i in range(batch)]
        return tf.stack([r[0] for r in results]), tf.stack([r[1] for r in results])
    indices, num_valid = tf.map_fn(
        one_image,
        (boxes, scores),
        fn_output_signature=(tf.TensorSpec([max_output_size], tf.int32),
                             tf.TensorSpec([], tf.int32)),
    )
    return indices, num_valid
