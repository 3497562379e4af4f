"""Post-processing shared by every head and every inference path.

Shapes: B batch, C candidates, D = max_detections.

- `select_detections`: score threshold, class-aware NMS, top-D, padding: what each
  head's `detect` ends with.
- `finalize_detections`: the inference tail after `head.detect`: boxes back to the
  original image's pixels (undo the resize, clip), into the user's
  `bounding_box_format`, padding rows -1. `FPNDetector.detect`, the SavedModel and
  the TFLite export all call it.
"""

from keras import ops

from fpn_keras.boxes.convert import from_xyxy
from fpn_keras.boxes.nms import batched_nms


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
    valid = indices >= 0  # [B, D]
    safe = ops.maximum(indices, 0)
    boxes = ops.take_along_axis(boxes, safe[..., None], axis=1)
    return {
        "boxes": ops.where(valid[..., None], boxes, -1.0),
        "scores": ops.where(valid, ops.take_along_axis(scores, safe, axis=1), 0.0),
        "labels": ops.where(valid, ops.cast(ops.take_along_axis(classes, safe, axis=1), "int32"), -1),
        "num_detections": num_detections,
    }


def finalize_detections(detections, bounding_box_format, image_shape, scales=None, original_sizes=None):
    """A head's detections -> the user's: boxes in `bounding_box_format`, -1 padding rows.

    detections: `select_detections`' output (boxes xyxy on the model's input canvas of
        `image_shape` (height, width)).
    scales [B], original_sizes [B, 2] (height, width): when given, boxes are divided by
        the resize factor and clipped to the original image (the preprocessing contract
        of `fpn_keras.data.pipeline.prepare` and the exports), and relative formats are
        relative to the original size.
    Returns the same dict with "boxes" converted; "labels" int32, "num_detections" int32.
    """
    boxes = ops.cast(detections["boxes"], "float32")
    height, width = image_shape
    if scales is not None:
        boxes = boxes / ops.cast(scales, "float32")[:, None, None]
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
