"""Intersection over union of `xyxy` boxes.

`keras.utils.bounding_boxes.compute_iou` exists, but it divides by the union
without guarding zero-area boxes (padding and degenerate boxes then give NaN or
1.0 depending on the backend); detection matching must see IoU 0 for them, so
we keep this small version.
"""

from keras import ops

from fpn_keras.boxes.convert import box_area

_EPS = 1e-8


def pairwise_iou(boxes1, boxes2):
    """IoU of every pair: boxes1 [..., N, 4], boxes2 [..., M, 4] -> [..., N, M].

    Zero-area boxes have IoU 0 with everything (never NaN).
    """
    area1 = box_area(boxes1)  # [..., N]
    area2 = box_area(boxes2)  # [..., M]
    # [..., N, 1, 2] against [..., 1, M, 2]
    top_left = ops.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = ops.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = ops.maximum(bottom_right - top_left, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return ops.where(union > _EPS, inter / ops.maximum(union, _EPS), 0.0)


def generalized_iou(boxes1, boxes2):
    """Element-wise GIoU (Rezatofighi et al., 2019): [..., 4] x [..., 4] -> [...]."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    top_left = ops.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = ops.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = ops.maximum(bottom_right - top_left, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    iou = inter / ops.maximum(union, _EPS)
    # Smallest box enclosing both.
    enclose_wh = ops.maximum(
        ops.maximum(boxes1[..., 2:], boxes2[..., 2:])
        - ops.minimum(boxes1[..., :2], boxes2[..., :2]),
        0.0,
    )
    enclose = enclose_wh[..., 0] * enclose_wh[..., 1]
    return iou - (enclose - union) / ops.maximum(enclose, _EPS)
