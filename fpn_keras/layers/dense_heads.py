"""Dense (per-location) heads applied to every pyramid level with shared weights.

Shapes: B batch, Hl x Wl the size of level l, A anchors per location, K classes.
"""

import math

import keras
from keras import layers, ops

from fpn_keras.layers.norm import norm_layer


def per_anchor(x, num_anchors, depth):
    """[B, H, W, A * depth] -> [B, H*W*A, depth] float32, in the anchor generator's order
    (row, column, anchor). The anchor count stays static when H and W are known
    (TFLite and XLA need it); outputs are float32 under mixed precision, since the
    losses, decoding and NMS need it."""
    height, width = x.shape[1], x.shape[2]
    if isinstance(height, int) and isinstance(width, int):
        shape = (-1, height * width * num_anchors, depth)
    else:
        shape = (ops.shape(x)[0], -1, depth)
    return ops.cast(ops.reshape(x, shape), "float32")


@keras.saving.register_keras_serializable(package="fpn_keras")
class RetinaNetHead(layers.Layer):
    """RetinaNet class and box subnets (Lin et al., 2017, "Focal Loss", Figure 3).

    Each subnet: `num_convs` x (3x3 conv, `channels` wide, optional norm, ReLU),
    norm None / "group" / "batch" with epsilon `norm_epsilon` (None: Keras' 1e-3;
    torchvision's retinanet_resnet50_fpn_v2: "group", 1e-5; see layers/norm.py), then a
    3x3 conv to A*K class logits or A*4 box deltas. The class output bias starts at
    -log((1 - pi) / pi) with prior pi = 0.01 (RetinaNet, Section 4.1), so training starts
    with every anchor at ~0.01 foreground probability.

    call({"P3": [B, H3, W3, C], ...}) -> ({"P3": [B, H3*W3*A, K], ...} class
    logits, {"P3": [B, H3*W3*A, 4], ...} box deltas); anchor order per level is
    row-major over (y, x), then the A anchors of a location (as AnchorGenerator).
    """

    def __init__(self, num_classes, num_anchors=9, channels=256, num_convs=4,
                 norm=None, prior_probability=0.01, norm_epsilon=None, **kwargs):
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, received {num_classes}")
        self.num_classes = int(num_classes)
        self.num_anchors = int(num_anchors)
        self.channels = int(channels)
        self.num_convs = int(num_convs)
        self.norm = norm
        self.norm_epsilon = None if norm_epsilon is None else float(norm_epsilon)
        self.prior_probability = float(prior_probability)
        init = keras.initializers.RandomNormal(stddev=0.01)

        def tower(prefix):
            convs, norms = [], []
            for i in range(self.num_convs):
                convs.append(layers.Conv2D(self.channels, 3, padding="same",
                                           kernel_initializer=init, name=f"{prefix}_conv{i}"))
                norms.append(norm_layer(norm, self.channels, f"{prefix}_norm{i}", self.norm_epsilon))
            return convs, [n for n in norms if n is not None]

        self.cls_convs, self.cls_norms = tower("cls")
        self.box_convs, self.box_norms = tower("box")
        bias = -math.log((1.0 - self.prior_probability) / self.prior_probability)
        self.cls_logits = layers.Conv2D(
            self.num_anchors * self.num_classes, 3, padding="same",
            kernel_initializer=init,
            bias_initializer=keras.initializers.Constant(bias), name="cls_logits")
        self.box_deltas = layers.Conv2D(
            self.num_anchors * 4, 3, padding="same",
            kernel_initializer=init, name="box_deltas")

    def build(self, input_shape):
        shape = next(iter(input_shape.values()))
        shape = (None, None, None, shape[-1])
        for convs, norms in ((self.cls_convs, self.cls_norms), (self.box_convs, self.box_norms)):
            in_shape = shape
            for i, conv in enumerate(convs):
                conv.build(in_shape)
                in_shape = in_shape[:-1] + (self.channels,)
                if norms:
                    norms[i].build(in_shape)
        tower_shape = shape[:-1] + (self.channels if self.num_convs else shape[-1],)
        self.cls_logits.build(tower_shape)
        self.box_deltas.build(tower_shape)
        self.built = True

    def _tower(self, x, convs, norms, training):
        for i, conv in enumerate(convs):
            x = conv(x)
            if norms:
                x = norms[i](x, training=training)
            x = ops.relu(x)
        return x

    def call(self, features, training=False):
        cls_per_level, box_per_level = {}, {}
        for name, x in features.items():
            cls = self.cls_logits(self._tower(x, self.cls_convs, self.cls_norms, training))
            box = self.box_deltas(self._tower(x, self.box_convs, self.box_norms, training))
            cls_per_level[name] = per_anchor(cls, self.num_anchors, self.num_classes)
            box_per_level[name] = per_anchor(box, self.num_anchors, 4)
        return cls_per_level, box_per_level

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes,
            "num_anchors": self.num_anchors,
            "channels": self.channels,
            "num_convs": self.num_convs,
            "norm": self.norm,
            "prior_probability": self.prior_probability,
            "norm_epsilon": self.norm_epsilon,
        })
        return config


@keras.saving.register_keras_serializable(package="fpn_keras")
class RPNHead(layers.Layer):
    """Region Proposal Network head (Faster R-CNN; FPN paper Section 4.1), shared by all levels.

    `conv_depth` x 3x3 conv (`channels`, ReLU; 1 in the paper, 2 in torchvision's
    fasterrcnn_resnet50_fpn_v2), then 1x1 convs to A objectness logits and 4A deltas.
    call({"P2": [B, H2, W2, C], ...}) -> ({"P2": [B, H2*W2*A], ...} objectness
    logits, {"P2": [B, H2*W2*A, 4], ...} deltas); same anchor order as RetinaNetHead.
    """

    def __init__(self, num_anchors=3, channels=256, conv_depth=1, **kwargs):
        super().__init__(**kwargs)
        if conv_depth < 1:
            raise ValueError(f"conv_depth must be >= 1, received {conv_depth}")
        self.num_anchors = int(num_anchors)
        self.channels = int(channels)
        self.conv_depth = int(conv_depth)
        init = keras.initializers.RandomNormal(stddev=0.01)
        self.conv = layers.Conv2D(self.channels, 3, padding="same", kernel_initializer=init, name="conv")
        # convs 2..conv_depth (the first keeps its name, so older model files load)
        self.more_convs = [layers.Conv2D(self.channels, 3, padding="same", kernel_initializer=init,
                                         name=f"conv{i + 1}") for i in range(1, self.conv_depth)]
        self.objectness = layers.Conv2D(self.num_anchors, 1, kernel_initializer=init, name="objectness")
        self.deltas = layers.Conv2D(self.num_anchors * 4, 1, kernel_initializer=init, name="deltas")

    def build(self, input_shape):
        shape = next(iter(input_shape.values()))
        self.conv.build((None, None, None, shape[-1]))
        for conv in self.more_convs:
            conv.build((None, None, None, self.channels))
        self.objectness.build((None, None, None, self.channels))
        self.deltas.build((None, None, None, self.channels))
        self.built = True

    def call(self, features):
        objectness, deltas = {}, {}
        for name, x in features.items():
            x = ops.relu(self.conv(x))
            for conv in self.more_convs:
                x = ops.relu(conv(x))
            objectness[name] = per_anchor(self.objectness(x), self.num_anchors, 1)[..., 0]
            deltas[name] = per_anchor(self.deltas(x), self.num_anchors, 4)
        return objectness, deltas

    def get_config(self):
        config = super().get_config()
        config.update({"num_anchors": self.num_anchors, "channels": self.channels,
                       "conv_depth": self.conv_depth})
        return config
