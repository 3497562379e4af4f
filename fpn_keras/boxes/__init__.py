"""Box operations. Inside the package boxes are `xyxy`, absolute pixels, float32."""

from fpn_keras.boxes.coder import BoxCoder
from fpn_keras.boxes.convert import clip_boxes, from_xyxy, to_xyxy
from fpn_keras.boxes.iou import generalized_iou, pairwise_iou
from fpn_keras.boxes.nms import batched_nms

__all__ = [
    "BoxCoder",
    "batched_nms",
    "clip_boxes",
    "from_xyxy",
    "generalized_iou",
    "pairwise_iou",
    "to_xyxy",
]
