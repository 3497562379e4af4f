"""Box <-> delta coding, as in R-CNN (Girshick et al.) and detectron2's Box2BoxTransform.

Core Keras has `encode_box_to_deltas` / `decode_deltas_to_boxes`, but without
per-coordinate weights given as (wx, wy, ww, wh) and without clamping dw/dh
before `exp`; an untrained head can emit dw = 50 and overflow to inf. We clamp to
log(1000 / 16) like detectron2 and torchvision.
"""

import math

from keras import ops

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes `xyxy` boxes as deltas (dx, dy, dw, dh) relative to `xyxy` anchors.

    dx = wx * (x - xa) / wa, dy = wy * (y - ya) / ha,
    dw = ww * log(w / wa),   dh = wh * log(h / ha)   (centres and sizes).
    """

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), scale_clamp=DEFAULT_SCALE_CLAMP):
        if len(weights) != 4:
            raise ValueError(f"weights must have 4 values, received {weights!r}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    @staticmethod
    def _centre_size(boxes):
        x1, y1, x2, y2 = ops.unstack(boxes, 4, axis=-1)
        return (x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1

    def encode(self, boxes, anchors):
        """boxes, anchors [..., 4] xyxy -> deltas [..., 4]. Degenerate boxes give finite deltas."""
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = self._centre_size(anchors)
        bx, by, bw, bh = self._centre_size(boxes)
        aw = ops.maximum(aw, 1e-6)
        ah = ops.maximum(ah, 1e-6)
        # Zero-size targets would give log(0) = -inf; they are never positives,
        # but their deltas must still be finite for the masked loss.
        bw = ops.maximum(bw, 1e-6)
        bh = ops.maximum(bh, 1e-6)
        return ops.stack(
            [
                wx * (bx - ax) / aw,
                wy * (by - ay) / ah,
                ww * ops.log(bw / aw),
                wh * ops.log(bh / ah),
            ],
            axis=-1,
        )

    def decode(self, deltas, anchors):
        """deltas [..., 4], anchors [..., 4] xyxy (broadcastable) -> boxes [..., 4] xyxy."""
        deltas = ops.cast(deltas, "float32")
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = self._centre_size(anchors)
        dx, dy, dw, dh = ops.unstack(deltas, 4, axis=-1)
        dw = ops.minimum(dw / ww, self.scale_clamp)
        dh = ops.minimum(dh / wh, self.scale_clamp)
        cx = dx / wx * aw + ax
        cy = dy / wy * ah + ay
        w = ops.exp(dw) * aw
        h = ops.exp(dh) * ah
        return ops.stack(
            [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1
        )

    def get_config(self):
        return {"weights": list(self.weights), "scale_clamp": self.scale_clamp}
