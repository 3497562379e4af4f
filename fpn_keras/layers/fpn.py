"""Feature Pyramid Network neck (Lin et al., 2017, Section 3, Figure 3).

Inputs {"C2".."C5"} (or a contiguous subset ending at C5) -> outputs
{"P<min_level>".."P<max_level>"}, all with `channels` channels.

  lateral_Cl: 1x1 conv of Cl                       (lateral connection)
  M5 = lateral_C5;  Ml = lateral_Cl + up2(M(l+1))   (top-down, nearest 2x)
  Pl = output_Pl(Ml): 3x3 conv                       (reduces upsampling aliasing)
  P6, P7 (levels above the backbone's): stride-2 3x3 conv of C5 or P5, with a
  ReLU before P7 (RetinaNet), or a 1x1 max-pool of P5 with stride 2 (Faster R-CNN).

Ablations of the paper's Table 1 (keyword arguments, both True by default):
  top_down=False: no top-down pathway, Pl = output_Pl(lateral_Cl) (the
      "bottom-up pyramid", row (d) of Table 1); only C<min_level>..C<top> needed.
  lateral=False: top-down without the 1x1 lateral connections, M5 = lateral_C5,
      Ml = up2(M(l+1)) (row (e)); only C5 is read.
A single level (min_level == max_level, e.g. 5 with top_down=False: a lone
C5-like map, or 2: "only the finest level P2") needs no other option.

Stride-2 convs (P6, P7) pad as `conv_padding` says: "same" (Keras: the extra row /
column at the bottom / right only, when the input side is even) or "symmetric" (k // 2
zeros on every side, then "valid": torch's Conv2d(padding=1), torchvision and
detectron2). Output sides are ceil(H / 2) in both; the values differ for even H.

`top_down_upsampling=1` is for backbones whose levels share one resolution (torchvision's
MobileNetV3-Large FPN: C4 and C5 both at stride 32): Ml = lateral_Cl + M(l+1), no upsampling
(torchvision's nearest interpolation to the lateral's own size is the identity).
norm (None, "group" or "batch", epsilon `norm_epsilon`; layers/norm.py) follows every
lateral and output conv, which then have no bias (torchvision's FeaturePyramidNetwork with
a norm_layer: fasterrcnn_resnet50_fpn_v2 uses BatchNorm2d); the extra levels have none.

The upsampled map is cropped to the lateral's exact size (or, for backbones
that round sizes down, resized to it, as torchvision does), so inputs whose side
is not a multiple of 32 work.
"""

import keras
from keras import layers, ops

from fpn_keras.layers.norm import check_norm, norm_layer

CONV_PADDINGS = ("same", "symmetric")


def top_down(coarse, lateral):
    """Nearest-neighbour 2x upsampling of `coarse` [B, h, w, C] to `lateral`'s size [B, H, W, C]."""
    height, width = ops.shape(lateral)[1], ops.shape(lateral)[2]
    upsampled = ops.repeat(ops.repeat(coarse, 2, axis=1), 2, axis=2)
    short = [isinstance(u, int) and isinstance(t, int) and u < t
             for u, t in zip(upsampled.shape[1:3], (height, width))]
    if any(short):
        # Backbones that round sizes down (floor) leave 2x upsampling one short.
        return ops.image.resize(coarse, (height, width), interpolation="nearest")
    # Crop: a stride-2 'same' conv gives ceil(H / 2), so 2 * ceil(H / 2) >= H.
    return upsampled[:, :height, :width, :]


@keras.saving.register_keras_serializable(package="fpn_keras")
class FeaturePyramid(layers.Layer):
    """FPN neck.

    Args:
        min_level, max_level: output levels (2..5 from the backbone, higher
            levels are extra). RetinaNet: 3..7. Faster R-CNN: 2..6.
        channels: width of every P level (256 in the paper).
        extra_levels_source: "C5" (RetinaNet paper) or "P5" (detectron2's
            RetinaNet "P6P7 from P5").
        extra_levels_type: "conv" (stride-2 3x3 conv) or "max_pool" (FPN paper's
            P6 for the RPN: subsampling P5 by 2).
        separable: depthwise-separable 3x3 output convs (FPN-lite for mobile).
        top_down: False drops the top-down pathway (each Pl from Cl alone).
        lateral: False drops the lateral connections below C5 (Pl from the
            upsampled coarser map alone).
        conv_padding: "same" or "symmetric" padding of the stride-2 convs (see above).
        top_down_upsampling: 2 (each Cl at twice C(l+1)'s resolution) or 1 (all at one
            resolution, see above).
        norm, norm_epsilon: normalisation after the lateral and output convs (see above).
    """

    def __init__(self, min_level=3, max_level=7, channels=256,
                 extra_levels_source="C5", extra_levels_type="conv",
                 separable=False, kernel_initializer="glorot_uniform", top_down=True,
                 lateral=True, conv_padding="same", top_down_upsampling=2, norm=None, norm_epsilon=None,
                 **kwargs):
        super().__init__(**kwargs)
        if min_level > max_level:
            raise ValueError(f"min_level ({min_level}) must be <= max_level ({max_level})")
        if min_level < 2:
            raise ValueError(f"min_level must be >= 2 (C2 is the finest backbone level), received {min_level}")
        if extra_levels_source not in ("C5", "P5"):
            raise ValueError(f"extra_levels_source must be 'C5' or 'P5', received {extra_levels_source!r}")
        if extra_levels_type not in ("conv", "max_pool"):
            raise ValueError(f"extra_levels_type must be 'conv' or 'max_pool', received {extra_levels_type!r}")
        self.min_level = int(min_level)
        self.max_level = int(max_level)
        self.channels = int(channels)
        self.extra_levels_source = extra_levels_source
        self.extra_levels_type = extra_levels_type
        self.separable = bool(separable)
        self.top_down = bool(top_down)
        self.use_lateral = bool(lateral)
        if not self.top_down and not self.use_lateral:
            raise ValueError("top_down=False and lateral=False leave no path from the backbone "
                             "to levels below C5; keep one of them")
        if conv_padding not in CONV_PADDINGS:
            raise ValueError(f"conv_padding must be one of {CONV_PADDINGS}, received {conv_padding!r}")
        self.conv_padding = conv_padding
        if top_down_upsampling not in (1, 2):
            raise ValueError(f"top_down_upsampling must be 2 or 1, received {top_down_upsampling!r}")
        self.top_down_upsampling = int(top_down_upsampling)
        check_norm(norm)
        self.norm = norm
        self.norm_epsilon = None if norm_epsilon is None else float(norm_epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.backbone_max_level = min(self.max_level, 5)

        def conv(kernel_size, strides, name, use_bias=True):
            padding = "valid" if strides > 1 and conv_padding == "symmetric" else "same"
            if separable and kernel_size > 1:
                return layers.SeparableConv2D(
                    self.channels, kernel_size, strides=strides, padding=padding,
                    depthwise_initializer=self.kernel_initializer,
                    pointwise_initializer=self.kernel_initializer, use_bias=use_bias, name=name)
            return layers.Conv2D(
                self.channels, kernel_size, strides=strides, padding=padding,
                kernel_initializer=self.kernel_initializer, use_bias=use_bias, name=name)

        # Laterals for every backbone level from min_level up to C5 (the
        # top-down pathway starts at C5); output convs only for kept levels.
        # Without top-down, laterals only for the kept backbone levels;
        # without laterals, only C5's (it maps C5 to `channels`).
        bias = norm is None  # a norm's shift replaces the bias
        self.lateral = {f"C{l}": conv(1, 1, f"lateral_C{l}", bias) for l in self._lateral_levels()}
        self.output_convs = {
            f"P{l}": conv(3, 1, f"output_P{l}", bias)
            for l in range(self.min_level, self.backbone_max_level + 1)
        }
        self.lateral_norms = {} if norm is None else {
            name: norm_layer(norm, self.channels, f"{name}_norm", norm_epsilon) for name in self.lateral}
        self.output_norms = {} if norm is None else {
            name: norm_layer(norm, self.channels, f"{name}_norm", norm_epsilon) for name in self.output_convs}
        self.extra = {}
        for l in range(max(6, self.min_level), self.max_level + 1):
            if extra_levels_type == "max_pool":
                self.extra[f"P{l}"] = layers.MaxPooling2D(1, strides=2, padding="same", name=f"P{l}_pool")
            else:
                self.extra[f"P{l}"] = conv(3, 2, f"P{l}_conv")

    def _lateral_levels(self):
        if not self.use_lateral:
            return [5]
        if not self.top_down:  # max_level >= 6 implies C5 is among these
            return list(range(self.min_level, self.backbone_max_level + 1))
        return list(range(self.min_level, 6))

    def _needed_levels(self):
        if not self.top_down:
            return self._lateral_levels()
        return list(range(self.min_level, 6))  # without laterals Cl still gives Pl's size

    def build(self, input_shape):
        self._check_levels(input_shape)
        for l in self._lateral_levels():
            self.lateral[f"C{l}"].build(input_shape[f"C{l}"])
        for l in range(self.min_level, self.backbone_max_level + 1):
            shape = input_shape[f"C{l}"] if f"C{l}" in input_shape else input_shape["C5"]
            self.output_convs[f"P{l}"].build(tuple(shape[:-1]) + (self.channels,))
        for norm in list(self.lateral_norms.values()) + list(self.output_norms.values()):
            norm.build((None, None, None, self.channels))
        c5 = input_shape["C5"]
        source_channels = c5[-1] if self.extra_levels_source == "C5" else self.channels
        previous = source_channels
        for name, layer in self.extra.items():
            if isinstance(layer, layers.Layer) and not isinstance(layer, layers.MaxPooling2D):
                layer.build((None, None, None, previous))
            previous = self.channels
        self.built = True

    def _check_levels(self, features):
        needed = [f"C{l}" for l in self._needed_levels()]
        missing = [n for n in needed if n not in features]
        if missing:
            raise ValueError(
                f"FeaturePyramid(min_level={self.min_level}) needs backbone features "
                f"{needed}; missing {missing} (received {sorted(features)})"
            )

    def _lateral(self, level, x):
        x = self.lateral[f"C{level}"](x)
        return self.lateral_norms[f"C{level}"](x) if self.lateral_norms else x

    def _output(self, level, x):
        x = self.output_convs[f"P{level}"](x)
        return self.output_norms[f"P{level}"](x) if self.output_norms else x

    def call(self, features):
        self._check_levels(features)
        outputs = {}
        if self.top_down:
            # Top-down pathway from the coarsest backbone level.
            merged = self._lateral(5, features["C5"])
            if self.max_level >= 5:
                outputs["P5"] = self._output(5, merged)
            for l in range(4, self.min_level - 1, -1):
                if self.use_lateral:
                    lateral = self._lateral(l, features[f"C{l}"])
                    merged = lateral + (top_down(merged, lateral) if self.top_down_upsampling == 2 else merged)
                elif self.top_down_upsampling == 2:  # no lateral: only the upsampled coarser map, at Cl's size
                    merged = top_down(merged, features[f"C{l}"])
                if l <= self.max_level:
                    outputs[f"P{l}"] = self._output(l, merged)
        else:
            # Bottom-up pyramid: each level from its own backbone map.
            for l in range(self.min_level, self.backbone_max_level + 1):
                outputs[f"P{l}"] = self._output(l, self._lateral(l, features[f"C{l}"]))
        # Extra coarser levels.
        previous = features["C5"] if self.extra_levels_source == "C5" else outputs.get("P5")
        if self.extra_levels_type == "max_pool":
            previous = outputs["P5"]
        for l in range(6, self.max_level + 1):
            layer = self.extra[f"P{l}"]
            if l > 6 and self.extra_levels_type == "conv":
                previous = ops.relu(previous)  # RetinaNet: ReLU before P7.
            if self.conv_padding == "symmetric" and self.extra_levels_type == "conv":
                previous = ops.pad(previous, [[0, 0], [1, 1], [1, 1], [0, 0]])  # 3 // 2 per side
            previous = layer(previous)
            outputs[f"P{l}"] = previous
        return {f"P{l}": outputs[f"P{l}"] for l in range(self.min_level, self.max_level + 1)}

    def compute_output_shape(self, input_shape):
        shapes = {}
        for l in range(self.min_level, self.max_level + 1):
            if l <= 5:
                s = input_shape[f"C{l}"]
                shapes[f"P{l}"] = (s[0], s[1], s[2], self.channels)
            else:
                shapes[f"P{l}"] = (None, None, None, self.channels)
        return shapes

    def get_config(self):
        config = super().get_config()
        config.update({
            "min_level": self.min_level,
            "max_level": self.max_level,
            "channels": self.channels,
            "extra_levels_source": self.extra_levels_source,
            "extra_levels_type": self.extra_levels_type,
            "separable": self.separable,
            "top_down": self.top_down,
            "lateral": self.use_lateral,
            "conv_padding": self.conv_padding,
            "top_down_upsampling": self.top_down_upsampling,
            "norm": self.norm,
            "norm_epsilon": self.norm_epsilon,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config
