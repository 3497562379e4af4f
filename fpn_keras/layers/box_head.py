"""Fast R-CNN box head on pooled RoI features (FPN paper Section 4.2: "2fc" head; with
`num_conv` > 0 the "4conv1fc" head of the GroupNorm paper / torchvision's FastRCNNConvFCHead).

Shapes: B batch, R RoIs, S pooled size, C channels, K classes.
"""

import keras
from keras import layers, ops

from fpn_keras.layers.norm import check_norm, norm_layer


@keras.saving.register_keras_serializable(package="fpn_keras")
class BoxHead(layers.Layer):
    """`num_conv` x (3x3 conv, `conv_dim` wide, norm, ReLU) -> flatten (y, x, c) ->
    `num_fc` x (Dense(fc_dim) + ReLU) -> class logits (K + 1, background last) and
    class-specific box deltas (4K). norm None / "group" / "batch" (epsilon `norm_epsilon`,
    layers/norm.py); with a norm the convs have no bias. torchvision's
    fasterrcnn_resnet50_fpn_v2: num_conv 4, conv_dim 256, "batch", 1e-5, num_fc 1.

    call([B, R, S, S, C]) -> (cls_logits [B, R, K + 1], box_deltas [B, R, K, 4]).
    """

    def __init__(self, num_classes, fc_dim=1024, num_fc=2, num_conv=0, conv_dim=256, norm=None,
                 norm_epsilon=None, **kwargs):
        super().__init__(**kwargs)
        check_norm(norm)
        self.num_classes = int(num_classes)
        self.fc_dim = int(fc_dim)
        self.num_fc = int(num_fc)
        self.num_conv, self.conv_dim = int(num_conv), int(conv_dim)
        self.norm = norm
        self.norm_epsilon = None if norm_epsilon is None else float(norm_epsilon)
        self.convs = [layers.Conv2D(self.conv_dim, 3, padding="same", use_bias=norm is None,
                                    kernel_initializer=keras.initializers.HeNormal(), name=f"conv{i + 1}")
                      for i in range(self.num_conv)]
        self.norms = [norm_layer(norm, self.conv_dim, f"conv{i + 1}_norm", norm_epsilon)
                      for i in range(self.num_conv)] if norm is not None else []
        self.fcs = [layers.Dense(self.fc_dim, activation="relu", name=f"fc{i + 1}")
                    for i in range(self.num_fc)]
        self.cls_score = layers.Dense(self.num_classes + 1, name="cls_score",
                                      kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
        self.bbox_pred = layers.Dense(self.num_classes * 4, name="bbox_pred",
                                      kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))

    def build(self, input_shape):
        height, width, channels = input_shape[2:]
        for i, conv in enumerate(self.convs):
            conv.build((None, height, width, channels))
            channels = self.conv_dim
            if self.norms:
                self.norms[i].build((None, height, width, channels))
        size = height * width * channels
        for fc in self.fcs:
            fc.build((None, size))
            size = self.fc_dim
        self.cls_score.build((None, size))
        self.bbox_pred.build((None, size))
        self.built = True

    def call(self, pooled):
        batch = ops.shape(pooled)[0]
        num_rois = pooled.shape[1]
        # [B, R, S, S, C] -> [B * R, S, S, C]
        x = ops.reshape(pooled, (-1,) + tuple(pooled.shape[2:]))
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms:
                x = self.norms[i](x)
            x = ops.relu(x)
        # [B * R, S, S, C'] -> [B * R, S * S * C']
        x = ops.reshape(x, (-1, x.shape[1] * x.shape[2] * x.shape[3]))
        for fc in self.fcs:
            x = fc(x)
        # Outputs in float32 under mixed precision (losses, decoding and NMS need it).
        cls_logits = ops.cast(ops.reshape(self.cls_score(x), (batch, num_rois, self.num_classes + 1)), "float32")
        box_deltas = ops.cast(ops.reshape(self.bbox_pred(x), (batch, num_rois, self.num_classes, 4)), "float32")
        return cls_logits, box_deltas

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "fc_dim": self.fc_dim, "num_fc": self.num_fc,
                       "num_conv": self.num_conv, "conv_dim": self.conv_dim, "norm": self.norm,
                       "norm_epsilon": self.norm_epsilon})
        return config
