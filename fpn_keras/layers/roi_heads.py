"""The RoI heads of Faster R-CNN (FPN paper Section 4.2): multi-level RoIAlign + 2fc box head.

Shapes: B batch, R RoIs, S pooled size, C channels, K classes.
"""

import keras
from keras import layers

from fpn_keras.layers.box_head import BoxHead
from fpn_keras.layers.roi_align import level_strides, multilevel_roi_align
from fpn_keras.postprocess import FLOAT_SCOPE


@keras.saving.register_keras_serializable(package="fpn_keras")
class RoIHeads(layers.Layer):
    """Pools each RoI from its pyramid level (Eq. (1) of the FPN paper: level =
    floor(canonical_level + log2(sqrt(wh) / canonical_size)), clamped to
    [min_level, max_level]) with RoIAlign, then runs the `BoxHead`.

    call(features {"P2".."P5": [B, H_l, W_l, C]}, rois [B, R, 4] xyxy input pixels)
      -> (cls_logits [B, R, K + 1] (background last), box_deltas [B, R, K, 4]).
    `implementation`: the RoIAlign kernel, "auto" or "generic" (set through
    `FasterRCNN.set_implementations`; not saved). aligned (True: half-pixel shift, as
    detectron2; False: torchvision's MultiScaleRoIAlign), level_epsilon and max_sampling_ratio
    (the bound of sampling_ratio 0, detectron2's adaptive sampling): see
    `multilevel_roi_align` / `assign_levels`. feature_strides: each level's stride (None: 2**l).
    num_conv, conv_dim, norm, norm_epsilon: the box head's convs before its fcs (`BoxHead`).
    """

    implementation = "auto"

    def __init__(self, num_classes, min_level=2, max_level=5, pooled_size=7, sampling_ratio=2,
                 canonical_level=4, canonical_size=224.0, fc_dim=1024, num_fc=2, aligned=True,
                 level_epsilon=None, max_sampling_ratio=4, feature_strides=None, num_conv=0, conv_dim=256,
                 norm=None, norm_epsilon=None, **kwargs):
        super().__init__(**kwargs)
        self.min_level, self.max_level = int(min_level), int(max_level)
        self.pooled_size, self.sampling_ratio = int(pooled_size), int(sampling_ratio)
        self.canonical_level, self.canonical_size = int(canonical_level), float(canonical_size)
        self.aligned = bool(aligned)
        self.level_epsilon = None if level_epsilon is None else float(level_epsilon)
        self.max_sampling_ratio = int(max_sampling_ratio)
        self.feature_strides = None if feature_strides is None else tuple(
            level_strides(self.min_level, self.max_level, feature_strides))
        self.box_head = BoxHead(num_classes, fc_dim, num_fc, num_conv, conv_dim, norm, norm_epsilon,
                                name="box_head")

    def build(self, input_shape):
        channels = input_shape[f"P{self.min_level}"][-1]
        self.box_head.build((None, None, self.pooled_size, self.pooled_size, channels))
        self.built = True

    def call(self, features, rois):
        with keras.name_scope(FLOAT_SCOPE):  # sampling coordinates: float32 in an int8 TFLite export
            pooled = multilevel_roi_align(features, rois, self.min_level, self.max_level, self.pooled_size,
                                          self.sampling_ratio, self.aligned, self.canonical_level,
                                          self.canonical_size, self.implementation, self.level_epsilon,
                                          self.max_sampling_ratio, self.feature_strides)
        return self.box_head(pooled)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.box_head.num_classes, "min_level": self.min_level, "max_level": self.max_level,
            "pooled_size": self.pooled_size, "sampling_ratio": self.sampling_ratio,
            "canonical_level": self.canonical_level, "canonical_size": self.canonical_size,
            "fc_dim": self.box_head.fc_dim, "num_fc": self.box_head.num_fc, "aligned": self.aligned,
            "level_epsilon": self.level_epsilon, "max_sampling_ratio": self.max_sampling_ratio,
            "feature_strides": None if self.feature_strides is None else list(self.feature_strides),
            "num_conv": self.box_head.num_conv,
            "conv_dim": self.box_head.conv_dim, "norm": self.box_head.norm,
            "norm_epsilon": self.box_head.norm_epsilon})
        return config
