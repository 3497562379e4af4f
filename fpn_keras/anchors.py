"""Anchors for a feature pyramid.

Level l has stride 2**l. Each location gets len(scales) * len(aspect_ratios)
anchors of side `anchor_scale * 2**l * scale`, reshaped to the aspect ratio
(ratio = height / width) at constant area, centred at ((x + offset) * stride,
(y + offset) * stride). RetinaNet: P3-P7, anchor_scale 4 (sizes 32..512),
scales 2**0, 2**(1/3), 2**(2/3), ratios 0.5, 1, 2 -> 9 anchors per location.

Order of anchors (must match the heads' reshape): for each level, row-major
over (y, x), then scale-major over (scale, ratio).
"""

import math

from keras import ops


class AnchorGenerator:
    """Generates `xyxy` anchors in pixels for levels min_level..max_level."""

    def __init__(
        self,
        min_level=3,
        max_level=7,
        anchor_scale=4.0,
        scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        aspect_ratios=(0.5, 1.0, 2.0),
        offset=0.5,
    ):
        if min_level > max_level:
            raise ValueError(
                f"min_level ({min_level}) must be <= max_level ({max_level})"
            )
        if not scales or not aspect_ratios:
            raise ValueError(
                f"scales and aspect_ratios must be non-empty, received {scales!r}, "
                f"{aspect_ratios!r}"
            )
        if any(r <= 0 for r in aspect_ratios) or any(s <= 0 for s in scales):
            raise ValueError(
                f"scales and aspect_ratios must be > 0, received {scales!r}, "
                f"{aspect_ratios!r}"
            )
        self.min_level = int(min_level)
        self.max_level = int(max_level)
        self.anchor_scale = float(anchor_scale)
        self.scales = tuple(float(s) for s in scales)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.offset = float(offset)

    @property
    def num_anchors_per_location(self):
        return len(self.scales) * len(self.aspect_ratios)

    def cell_anchors(self, level):
        """[A, 4] anchors centred on (0, 0) for one level, as Python floats."""
        base = self.anchor_scale * 2**level
        cells = []
        for scale in self.scales:
            for ratio in self.aspect_ratios:
                # Constant area (base*scale)^2, height / width = ratio.
                w = base * scale / math.sqrt(ratio)
                h = base * scale * math.sqrt(ratio)
                cells.append([-w / 2, -h / 2, w / 2, h / 2])
        return cells

    def level_anchors(self, level, height, width):
        """Anchors [height * width * A, 4] for a feature map of `height` x `width`."""
        stride = float(2**level)
        ys = (ops.cast(ops.arange(height), "float32") + self.offset) * stride
        xs = (ops.cast(ops.arange(width), "float32") + self.offset) * stride
        # [H, W] grids of centres -> [H * W, 1, 4] shifts.
        cy, cx = ops.meshgrid(ys, xs, indexing="ij")
        cy = ops.reshape(cy, (-1,))
        cx = ops.reshape(cx, (-1,))
        shifts = ops.stack([cx, cy, cx, cy], axis=-1)[:, None, :]
        cells = ops.convert_to_tensor(self.cell_anchors(level), "float32")[None]
        return ops.reshape(shifts + cells, (-1, 4))

    def __call__(self, feature_shapes):
        """feature_shapes: {"P3": (h3, w3), ...} -> {"P3": [h3 * w3 * A, 4], ...}."""
        anchors = {}
        for level in range(self.min_level, self.max_level + 1):
            name = f"P{level}"
            if name not in feature_shapes:
                raise ValueError(
                    f"feature_shapes has no {name}; received levels "
                    f"{sorted(feature_shapes)}"
                )
            height, width = feature_shapes[name]
            anchors[name] = self.level_anchors(level, height, width)
        return anchors

    def get_config(self):
        return {
            "min_level": self.min_level,
            "max_level": self.max_level,
            "anchor_scale": self.anchor_scale,
            "scales": list(self.scales),
            "aspect_ratios": list(self.aspect_ratios),
            "offset": self.offset,
        }
