"""Fast R-CNN box head on pooled RoI features (FPN paper Section 4.2: "2fc" head).

Shapes: B batch, R RoIs, S pooled size, C channels, K classes.
"""

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="fpn_keras")
class BoxHead(layers.Layer):
    """Flatten -> `num_fc` x (Dense(fc_dim) + ReLU) -> class logits (K + 1, background
    last) and class-specific box deltas (4K).

    call([B, R, S, S, C]) -> (cls_logits [B, R, K + 1], box_deltas [B, R, K, 4]).
    """

    def __init__(self, num_classes, fc_dim=1024, num_fc=2, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.fc_dim = int(fc_dim)
        self.num_fc = int(num_fc)
        self.fcs = [layers.Dense(self.fc_dim, activation="relu", name=f"fc{i + 1}")
                    for i in range(self.num_fc)]
        self.cls_score = layers.Dense(self.num_classes + 1, name="cls_score",
                                      kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
        self.bbox_pred = layers.Dense(self.num_classes * 4, name="bbox_pred",
                                      kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))

    def build(self, input_shape):
        size = 1
        for d in input_shape[2:]:
            size *= d
        for fc in self.fcs:
            fc.build((None, size))
            size = self.fc_dim
        self.cls_score.build((None, size))
        self.bbox_pred.build((None, size))
        self.built = True

    def call(self, pooled):
        batch = ops.shape(pooled)[0]
        num_rois = pooled.shape[1]
        # [B, R, S, S, C] -> [B * R, S * S * C]
        x = ops.reshape(pooled, (-1, pooled.shape[2] * pooled.shape[3] * pooled.shape[4]))
        for fc in self.fcs:
            x = fc(x)
        # Outputs in float32 under mixed precision (losses, decoding and NMS need it).
        cls_logits = ops.cast(ops.reshape(self.cls_score(x), (batch, num_rois, self.num_classes + 1)), "float32")
        box_deltas = ops.cast(ops.reshape(self.bbox_pred(x), (batch, num_rois, self.num_classes, 4)), "float32")
        return cls_logits, box_deltas

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "fc_dim": self.fc_dim, "num_fc": self.num_fc})
        return config
