"""Box format conversion at the package's edges, and clipping.

The package works in `xyxy` (absolute pixels). Users pick any format that
`keras.utils.bounding_boxes` knows (`xyxy`, `yxyx`, `xywh`, `center_xywh`,
`center_yxhw`, `rel_xyxy`, ...); these helpers convert at the edges.
"""

from keras import ops
from keras.utils import bounding_boxes

FORMATS = (
    "xyxy",
    "yxyx",
    "xywh",
    "center_xywh",
    "center_yxhw",
    "rel_xyxy",
    "rel_yxyx",
    "rel_xywh",
    "rel_center_xywh",
)


def check_format(bounding_box_format):
    if bounding_box_format not in FORMATS:
        raise ValueError(
            f"bounding_box_format must be one of {FORMATS}, received "
            f"{bounding_box_format!r}"
        )
    return bounding_box_format


def to_xyxy(boxes, source, height=None, width=None):
    """Boxes [..., 4] in `source` format -> `xyxy` float32."""
    if source == "xyxy":
        return ops.cast(boxes, "float32")
    return bounding_boxes.convert_format(
        boxes, source=source, target="xyxy", height=height, width=width
    )


def from_xyxy(boxes, target, height=None, width=None):
    """Boxes [..., 4] in `xyxy` -> `target` format."""
    if target == "xyxy":
        return ops.cast(boxes, "float32")
    return bounding_boxes.convert_format(
        boxes, source="xyxy", target=target, height=height, width=width
    )


def clip_boxes(boxes, height, width):
    """Clip `xyxy` boxes [B, ..., 4] to an image of `height` x `width` pixels: numbers
    (every image the same) or [B] tensors (one size per image of the batch)."""
    x1, y1, x2, y2 = ops.unstack(boxes, 4, axis=-1)
    width = ops.cast(width, boxes.dtype)
    height = ops.cast(height, boxes.dtype)
    if len(getattr(width, "shape", ())) == 1:  # per image: [B] -> [B, 1, ...] against x1 [B, ...]
        per_image = (-1,) + (1,) * (len(x1.shape) - 1)
        width, height = ops.reshape(width, per_image), ops.reshape(height, per_image)
    x1 = ops.minimum(ops.maximum(x1, 0.0), width)
    x2 = ops.minimum(ops.maximum(x2, 0.0), width)
    y1 = ops.minimum(ops.maximum(y1, 0.0), height)
    y2 = ops.minimum(ops.maximum(y2, 0.0), height)
    return ops.stack([x1, y1, x2, y2], axis=-1)


def box_area(boxes):
    """Area of `xyxy` boxes [..., 4] -> [...]; inverted boxes have area 0."""
    x1, y1, x2, y2 = ops.unstack(boxes, 4, axis=-1)
    return ops.maximum(x2 - x1, 0.0) * ops.maximum(y2 - y1, 0.0)
