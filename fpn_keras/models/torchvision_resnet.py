"""ResNet-18/34/50/101 in torchvision's exact layout, for torchvision checkpoints.

images [B, H, W, 3] RGB 0..255 -> {"C2".."C5"} (layer1..layer4 outputs, strides
4..32, channels_last), like the other backbones (models/backbones.py). Differences
from keras.applications' ResNet that change the numbers, all as torchvision:
  - input: (x / 255 - ImageNet mean) / ImageNet std, RGB (GeneralizedRCNNTransform);
  - the stride of a bottleneck sits on its 3x3 conv (conv2), not on the first 1x1;
  - convs have no bias; BatchNorm epsilon 1e-5 (norm_epsilon), frozen by default (FrozenBatchNorm,
    torchvision's detection backbones use norm_layer=FrozenBatchNorm2d);
  - stride-2 convs and the max-pool pad symmetrically (explicit ZeroPadding2D, then
    "valid"; Keras "same" pads stride-2 layers bottom/right only), so sizes are
    floor((H + 2p - k) / 2) + 1 as in torch. The max-pool's zero padding equals
    torch's -inf padding because it follows a ReLU.
Layer names are torchvision's module paths ("conv1", "layer1.0.conv2",
"layer2.0.downsample.0"), so `convert.torchvision.load_torchvision_resnet` maps
"<layer name>.weight" etc. one-to-one onto state_dict keys.
"""

import keras
from keras import layers, ops

from fpn_keras.convert.resnet_layout import (IMAGENET_MEAN, IMAGENET_STD, STEM_CHANNELS,
                                             block_convs, resnet_blocks, resnet_layout)
from fpn_keras.layers.frozen_batchnorm import FrozenBatchNorm

TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


@keras.saving.register_keras_serializable(package="fpn_keras")
class TorchvisionNormalization(layers.Layer):
    """RGB 0..255 [..., 3] -> (x / scale - mean) / std, in this order (torchvision's:
    scale 255, ImageNet mean / std). channel_order "bgr" reverses the channels first, and
    mean / std are then in BGR order (detectron2: scale 1, mean (103.53, 116.28, 123.675),
    std 1)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=255.0, channel_order="rgb", **kwargs):
        super().__init__(**kwargs)
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', received {channel_order!r}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.scale = float(scale)
        self.channel_order = channel_order

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self.channel_order == "bgr":
            images = ops.flip(images, axis=-1)
        if self.scale != 1.0:
            images = images / self.scale
        mean = ops.convert_to_tensor(self.mean, self.compute_dtype)
        return (images - mean) / ops.convert_to_tensor(self.std, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "scale": self.scale,
                "channel_order": self.channel_order}


def _norm(norm, name, epsilon):
    if norm == "frozen":
        return FrozenBatchNorm(epsilon=epsilon, name=name)
    if norm == "batchnorm":  # torch's momentum 0.1 is Keras' 0.9
        return layers.BatchNormalization(epsilon=epsilon, momentum=0.9, name=name)
    raise ValueError(f"norm must be 'frozen' or 'batchnorm', received {norm!r}")


def _conv(x, filters, kernel, stride, name):
    """torch Conv2d(kernel, stride, padding=kernel // 2, bias=False), channels_last."""
    padding = "same"
    if stride > 1 and kernel > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}.pad")(x)
        padding = "valid"
    return layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                         kernel_initializer=keras.initializers.HeNormal(), name=name)(x)


def _block(x, kind, name, in_channels, width, out_channels, stride, downsample, norm, epsilon,
           stride_in_1x1=False):
    shortcut = x
    convs = block_convs(kind, in_channels, width, out_channels, stride, stride_in_1x1)
    for i, (conv, _, filters, kernel, conv_stride) in enumerate(convs, start=1):
        x = _conv(x, filters, kernel, conv_stride, f"{name}.{conv}")
        x = _norm(norm, f"{name}.bn{i}", epsilon)(x)
        if i < len(convs):
            x = layers.ReLU(name=f"{name}.relu{i}")(x)
    if downsample:
        shortcut = _conv(shortcut, out_channels, 1, stride, f"{name}.downsample.0")
        shortcut = _norm(norm, f"{name}.downsample.1", epsilon)(shortcut)
    x = layers.Add(name=f"{name}.add")([x, shortcut])
    return layers.ReLU(name=f"{name}.relu")(x)


def freeze_torchvision_resnet(model, trainable_layers):
    """torchvision's trainable_backbone_layers: 0..5 stages trainable from layer4
    down (5 also trains the stem and its norm, bn1); the rest become non-trainable."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, received {trainable_layers}")
    trainable = list(TRAINABLE_ORDER[:trainable_layers]) + (["bn1"] if trainable_layers == 5 else [])
    for layer in model.layers:
        if layer.weights:
            layer.trainable = any(layer.name == p or layer.name.startswith(p + ".") for p in trainable)


def torchvision_resnet(depth=50, weights=None, norm="frozen", trainable_layers=None,
                       norm_epsilon=1e-5, input_shape=(None, None, 3), stride_in_1x1=False,
                       normalization=None):
    """torchvision's resnet{depth} body as a Keras model images -> {"C2".."C5"}.

    Args:
        depth: 18, 34, 50 or 101.
        weights: None, or the path of a torchvision checkpoint (.pth / .pt /
            .safetensors): a classification state_dict ("conv1.weight", ...) or a
            detection one ("backbone.body.conv1.weight", ...); read without torch.
        norm: "frozen" (FrozenBatchNorm, torchvision's detection default) or
            "batchnorm" (Keras BatchNormalization with torch's epsilon / momentum).
        trainable_layers: stages left trainable, 0..5 (torchvision's
            trainable_backbone_layers); None: 3 with weights, 5 without (as
            torchvision, which trains everything when not pretrained).
        norm_epsilon: 1e-5 (torchvision's default); 0.0 for the COCO_V1 weights of
            retinanet_resnet50_fpn and fasterrcnn_resnet50_fpn, whose builders call
            overwrite_eps(model, 0.0) (weights converted from Detectron).
        stride_in_1x1: put a bottleneck's stride on its first 1x1 conv (detectron2's
            RESNETS.STRIDE_IN_1X1, True for its MSRA R-50 weights); torchvision: on the 3x3.
        normalization: the input layer (default TorchvisionNormalization(): RGB / 255,
            ImageNet mean / std); detectron2's: see convert.detectron2.
    """
    kind, _ = resnet_layout(depth)
    images = keras.Input(input_shape, name="images")
    if normalization is None:
        normalization = TorchvisionNormalization(name="preprocessing")
    x = normalization(images)
    x = _conv(x, STEM_CHANNELS, 7, 2, "conv1")
    x = layers.ReLU(name="relu")(_norm(norm, "bn1", norm_epsilon)(x))
    x = layers.ZeroPadding2D(1, name="maxpool.pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    outputs = {}
    for name, cin, width, cout, stride, downsample in resnet_blocks(depth):
        x = _block(x, kind, name, cin, width, cout, stride, downsample, norm, norm_epsilon, stride_in_1x1)
        outputs[f"C{int(name[5]) + 1}"] = x  # the last block of layer<l> gives C<l+1>
    model = keras.Model(images, outputs, name=f"torchvision_resnet{depth}_backbone")
    if weights is not None:
        from fpn_keras.convert.torchvision import load_torchvision_resnet, read_weights

        state = read_weights(weights)
        prefix = "backbone.body." if any(k.startswith("backbone.body.") for k in state) else ""
        load_torchvision_resnet(model, state, prefix=prefix)
    if trainable_layers is None:
        trainable_layers = 5 if weights is None else 3
    freeze_torchvision_resnet(model, trainable_layers)
    return model
