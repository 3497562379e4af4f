"""Anchors for a feature pyramid.

Level l has stride 2**l. Each location gets len(scales) * len(aspect_ratios)
anchors of side `anchor_scale * 2**l * scale`, reshaped to the aspect ratio
(ratio = height / width) at constant area, centred at ((x + offset) * stride,
(y + offset) * stride). RetinaNet: P3-P7, anchor_scale 4 (sizes 32..512),
scales 2**0, 2**(1/3), 2**(2/3), ratios 0.5, 1, 2 -> 9 anchors per location.

torchvision's conventions, as options (all off by default):
  offset=0.0                   centres at x * stride;
  sizes=((32, 40, 50), ...)    explicit sides per level (int(32 * 2**(k/3)), ...), instead of
                               anchor_scale * 2**l * scales;
  round_cells=True             cell corners rounded to integers (half to even, as torch.round);
  strides="image_over_grid"    stride per axis = image side // grid side (the padded canvas
                               over the level's size; 2**l only when 2**l divides the canvas).

Order of anchors (must match the heads' reshape): for each level, row-major
over (y, x), then scale-major over (scale, ratio).
"""

import math

from keras import ops

STRIDES = ("level", "image_over_grid")


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
        sizes=None,
        round_cells=False,
        strides="level",
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
        levels = self.max_level - self.min_level + 1
        if sizes is not None:
            sizes = tuple(tuple(float(v) for v in level) for level in sizes)
            if len(sizes) != levels or any(len(level) != len(self.scales) for level in sizes):
                raise ValueError(f"sizes must give {len(self.scales)} sides (one per scale) for each of "
                                 f"the {levels} levels P{min_level}-P{max_level}, received {sizes!r}")
        if strides not in STRIDES:
            raise ValueError(f"strides must be one of {STRIDES}, received {strides!r}")
        self.sizes = sizes
        self.round_cells = bool(round_cells)
        self.strides = strides

    @property
    def num_anchors_per_location(self):
        return len(self.scales) * len(self.aspect_ratios)

    def cell_anchors(self, level):
        """[A, 4] anchors centred on (0, 0) for one level, as Python floats."""
        if self.sizes is not None:
            sides = self.sizes[level - self.min_level]
        else:
            sides = [self.anchor_scale * 2**level * scale for scale in self.scales]
        cells = []
        for side in sides:
            for ratio in self.aspect_ratios:
                # Constant area side^2, height / width = ratio.
                w = side / math.sqrt(ratio)
                h = side * math.sqrt(ratio)
                cell = [-w / 2, -h / 2, w / 2, h / 2]
                cells.append([float(round(c)) for c in cell] if self.round_cells else cell)
        return cells

    def level_anchors(self, level, height, width, stride=None):
        """Anchors [height * width * A, 4] for a feature map of `height` x `width`;
        stride: (stride_y, stride_x) in pixels (default 2**level on both axes)."""
        stride_y, stride_x = (float(2**level),) * 2 if stride is None else stride
        ys = (ops.cast(ops.arange(height), "float32") + self.offset) * ops.cast(stride_y, "float32")
        xs = (ops.cast(ops.arange(width), "float32") + self.offset) * ops.cast(stride_x, "float32")
        # [H, W] grids of centres -> [H * W, 1, 4] shifts.
        cy, cx = ops.meshgrid(ys, xs, indexing="ij")
        cy = ops.reshape(cy, (-1,))
        cx = ops.reshape(cx, (-1,))
        shifts = ops.stack([cx, cy, cx, cy], axis=-1)[:, None, :]
        cells = ops.convert_to_tensor(self.cell_anchors(level), "float32")[None]
        return ops.reshape(shifts + cells, (-1, 4))

    def __call__(self, feature_shapes, image_shape=None):
        """feature_shapes: {"P3": (h3, w3), ...} -> {"P3": [h3 * w3 * A, 4], ...};
        image_shape: the (padded) canvas (height, width), needed by strides="image_over_grid"."""
        if self.strides == "image_over_grid" and image_shape is None:
            raise ValueError("AnchorGenerator(strides='image_over_grid') needs the image_shape")
        anchors = {}
        for level in range(self.min_level, self.max_level + 1):
            name = f"P{level}"
            if name not in feature_shapes:
                raise ValueError(
                    f"feature_shapes has no {name}; received levels "
                    f"{sorted(feature_shapes)}"
                )
            height, width = feature_shapes[name]
            stride = None
            if self.strides == "image_over_grid":  # torchvision: image_size // grid_size, per axis
                stride = (image_shape[0] // height, image_shape[1] // width)
            anchors[name] = self.level_anchors(level, height, width, stride)
        return anchors

    def get_config(self):
        return {
            "min_level": self.min_level,
            "max_level": self.max_level,
            "anchor_scale": self.anchor_scale,
            "scales": list(self.scales),
            "aspect_ratios": list(self.aspect_ratios),
            "offset": self.offset,
            "sizes": None if self.sizes is None else [list(level) for level in self.sizes],
            "round_cells": self.round_cells,
            "strides": self.strides,
        }

    def head_config(self):
        """The options a head exposes as anchor_offset / anchor_sizes / round_anchors /
        anchor_strides (`head_anchor_generator`), for the head's get_config."""
        config = self.get_config()
        return {"anchor_offset": config["offset"], "anchor_sizes": config["sizes"],
                "round_anchors": config["round_cells"], "anchor_strides": config["strides"]}


def head_anchor_generator(min_level, max_level, anchor_scale, anchor_scales, aspect_ratios,
                          anchor_offset, anchor_sizes, round_anchors, anchor_strides):
    """The AnchorGenerator of a head (RetinaNet, RPN) from its constructor arguments."""
    return AnchorGenerator(min_level, max_level, anchor_scale, tuple(anchor_scales), aspect_ratios,
                           offset=anchor_offset, sizes=anchor_sizes, round_cells=round_anchors,
                           strides=anchor_strides)
