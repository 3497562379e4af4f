"""Post-processing shared by every head and every inference path.

Shapes: B batch, C candidates, D = max_detections.

- `top_candidates`: one level's best (anchor, class) scores, decoded and clipped: the
  first step of RetinaNet's `detect` and of the RPN's proposals.
- `gather_kept`: values at the indices NMS kept, padded.
- `select_detections`: score threshold, class-aware NMS, top-D, padding: what each
  head's `detect` ends with.
- `finalize_detections`: the inference tail after `head.detect`: boxes back to the
  original image's pixels (undo the resize, clip), into the user's
  `bounding_box_format`, padding rows -1. `FPNDetector.detect`, the SavedModel and
  the TFLite export all call it.
"""

from keras import ops

from fpn_keras.boxes.convert import clip_boxes, from_xyxy
from fpn_keras.boxes.nms import batched_nms


# The name scope of the inference tail in the exports, and of the box arithmetic inside a
# two-stage head's `call` (proposals, RoIAlign sampling coordinates): a TFLite int8 export
# keeps this scope's ops in float32 (fpn_keras.export.tflite); int8 box coordinates would
# put boxes on a 256-level grid and gather indices out of range.
FLOAT_SCOPE = "postprocess"


def top_candidates(logits, deltas, anchors, k, box_coder, image_shape):
    """One level's k best (anchor, class) logits, their boxes decoded and clipped.

    logits [B, N, K] (K = 1 for objectness), deltas [B, N, 4], anchors [N, 4] xyxy,
    image_shape (height, width) to clip to (numbers, or [B] tensors per image), or None: not
    clipped -> (boxes [B, k, 4] xyxy, logits [B, k] descending, classes [B, k] int32). k is
    cut to N * K when N is static. Ranking logits, not
    probabilities: sigmoid is monotonic, so only the k kept need one.
    """
    num_classes = logits.shape[-1]
    flat = ops.reshape(logits, (ops.shape(logits)[0], -1))  # [B, N * K], anchor-major
    if isinstance(logits.shape[1], int):
        k = min(k, logits.shape[1] * num_classes)
    top_logits, top_idx = ops.top_k(flat, k=k)
    anchor_idx = top_idx // num_classes
    top_deltas = ops.take_along_axis(deltas, anchor_idx[..., None], axis=1)
    boxes = box_coder.decode(top_deltas, ops.take(anchors, anchor_idx, axis=0))
    if image_shape is not None:
        boxes = clip_boxes(boxes, *image_shape)
    return boxes, top_logits, ops.cast(top_idx % num_classes, "int32")


def gather_kept(indices, values, fill):
    """values [B, C] or [B, C, 4] at the kept indices [B, D] of `batched_nms` (-1: none
    kept) -> [B, D] or [B, D, 4], `fill` in the rows where none was kept."""
    valid, safe = indices >= 0, ops.maximum(indices, 0)
    if len(values.shape) == 3:
        valid, safe = valid[..., None], safe[..., None]
    return ops.where(valid, ops.take_along_axis(values, safe, axis=1), fill)


def select_detections(boxes, scores, classes, iou_threshold, max_detections, score_threshold,
                      implementation="auto"):
    """Class-aware NMS and padding.

    boxes [B, C, 4] xyxy, scores [B, C], classes [B, C] -> {"boxes" [B, D, 4] xyxy,
    "scores" [B, D], "labels" [B, D] int32, "num_detections" [B] int32}; rows past
    num_detections have box -1, score 0, label -1.
    """
    indices, num_detections = batched_nms(
        boxes, scores, classes, iou_threshold=iou_threshold,
        max_output_size=max_detections, score_threshold=score_threshold,
        implementation=implementation)
    return {
        "boxes": gather_kept(indices, boxes, -1.0),
        "scores": gather_kept(indices, scores, 0.0),
        "labels": gather_kept(indices, ops.cast(classes, "int32"), -1),
        "num_detections": num_detections,
    }


def finalize_detections(detections, bounding_box_format, image_shape, scales=None, original_sizes=None):
    """A head's detections -> the user's: boxes in `bounding_box_format`, -1 padding rows.

    detections: `select_detections`' output (boxes xyxy on the model's input canvas of
        `image_shape` (height, width)).
    scales [B] (or [B, 2]: a (height, width) factor each), original_sizes [B, 2] (height,
        width): when given, boxes are divided by the resize factor and clipped to the original image (the preprocessing contract
        of `fpn_keras.data.pipeline.prepare` and the exports), and relative formats are
        relative to the original size.
    Returns the same dict with "boxes" converted; "labels" int32, "num_detections" int32.
    """
    boxes = ops.cast(detections["boxes"], "float32")
    height, width = image_shape
    if scales is not None:
        scales = ops.cast(scales, "float32")
        if len(scales.shape) == 2:  # (height, width) factors -> (x, y, x, y)
            scales = ops.concatenate([scales[:, ::-1], scales[:, ::-1]], axis=-1)[:, None, :]
        else:
            scales = scales[:, None, None]
        boxes = boxes / scales
        sizes = ops.cast(original_sizes, "float32")
        limits = ops.concatenate([sizes[:, ::-1], sizes[:, ::-1]], axis=-1)[:, None, :]  # [B, 1, 4] w h w h
        boxes = ops.minimum(ops.maximum(boxes, 0.0), limits)
        height, width = sizes[:, 0:1, None], sizes[:, 1:2, None]
    boxes = from_xyxy(boxes, bounding_box_format, height, width)
    valid = detections["labels"][..., None] >= 0
    return {
        "boxes": ops.where(valid, ops.cast(boxes, "float32"), -1.0),
        "scores": ops.cast(detections["scores"], "float32"),
        "labels": ops.cast(detections["labels"], "int32"),
        "num_detections": ops.cast(detections["num_detections"], "int32"),
    }


__all__ = ["finalize_detections", "select_detections"]
