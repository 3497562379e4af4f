"""MobileNetV3-Large (Howard et al., 2019) in torchvision's exact layout, for torchvision checkpoints.

images [B, H, W, 3] RGB 0..255 -> feature maps (channels_last), named for `FeaturePyramid`:
  feature_maps="fpn"      torchvision's _mobilenet_extractor (fasterrcnn_mobilenet_v3_large_fpn):
                          {"C4": features.13 [B, H/32, W/32, 160], "C5": features.16 [.., 960]},
                          BOTH at stride 32 (the neck then needs `top_down_upsampling=1`);
  feature_maps="strides"  the last module at each stride: {"C2": features.3 (24 ch, stride 4),
                          "C3": features.6 (40, 8), "C4": features.12 (112, 16), "C5": features.16
                          (960, 32)}, for the default neck (recipes: "torchvision_mobilenet_v3_large").
Differences from keras.applications' MobileNetV3 that change the numbers, all as torchvision
(`convert.mobilenet_v3_layout` has the table):
  - input (x / 255 - ImageNet mean) / ImageNet std (GeneralizedRCNNTransform), not x / 127.5 - 1;
  - stride-2 convs pad (k - 1) // 2 on every side (explicit ZeroPadding2D, then "valid");
  - FrozenBatchNorm, epsilon 1e-5 (torchvision's FrozenBatchNorm2d), no dilation;
  - squeeze-excitation: mean -> 1x1 conv (bias) -> ReLU -> 1x1 conv -> hardsigmoid
    relu6(x + 3) / 6, squeeze channels make_divisible(expanded // 4, 8); hardswish x * relu6(x + 3) / 6.
Layer names are torchvision's module paths inside `features` ("0.0", "4.block.1.0",
"4.block.2.fc1"), so "<layer name>.weight" etc. map one-to-one onto state_dict keys
(detection: "backbone.body.<name>", classification: "features.<name>").
"""

import keras
from keras import layers, ops

from fpn_keras.convert.mobilenet_v3_layout import FEATURE_MAPS, NUM_FEATURES, STAGE_INDICES, features_layout
from fpn_keras.models.torchvision_resnet import TorchvisionNormalization, _norm


@keras.saving.register_keras_serializable(package="fpn_keras")
class HardSwish(layers.Layer):
    """x * relu6(x + 3) / 6 (torch.nn.Hardswish; the MobileNetV3 paper's h-swish)."""

    def call(self, x):
        return x * ops.relu6(x + 3.0) / 6.0


@keras.saving.register_keras_serializable(package="fpn_keras")
class HardSigmoid(layers.Layer):
    """relu6(x + 3) / 6 (torch.nn.Hardsigmoid; the MobileNetV3 paper's h-sigmoid)."""

    def call(self, x):
        return ops.relu6(x + 3.0) / 6.0


def _squeeze_excitation(x, path, squeeze_channels):
    """torchvision's SqueezeExcitation(scale_activation=Hardsigmoid): x * hardsigmoid(fc2(relu(
    fc1(mean of x over H, W)))); fc1, fc2 1x1 convs with bias. [B, H, W, C] -> [B, H, W, C]."""
    scale = layers.GlobalAveragePooling2D(keepdims=True, name=f"{path}.avgpool")(x)
    scale = layers.Conv2D(squeeze_channels, 1, name=f"{path}.fc1")(scale)
    scale = layers.ReLU(name=f"{path}.activation")(scale)
    scale = layers.Conv2D(x.shape[-1], 1, name=f"{path}.fc2")(scale)
    scale = HardSigmoid(name=f"{path}.scale_activation")(scale)
    return layers.Multiply(name=f"{path}.scale")([x, scale])


def _conv_norm_activation(x, path, cout, kernel, stride, groups, activation, norm, epsilon):
    """torch Conv2d(kernel, stride, padding=(kernel - 1) // 2, groups, bias=False) + norm + activation."""
    padding = "same"
    if stride > 1:
        x = layers.ZeroPadding2D((kernel - 1) // 2, name=f"{path}.pad")(x)
        padding = "valid"
    if groups > 1:
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False, name=f"{path}.0")(x)
    else:
        x = layers.Conv2D(cout, kernel, strides=stride, padding=padding, use_bias=False,
                          kernel_initializer=keras.initializers.HeNormal(), name=f"{path}.0")(x)
    x = _norm(norm, f"{path}.1", epsilon)(x)
    if activation == "HS":
        return HardSwish(name=f"{path}.2")(x)
    return layers.ReLU(name=f"{path}.2")(x) if activation == "RE" else x


def freeze_torchvision_mobilenet_v3(model, trainable_layers):
    """torchvision's trainable_backbone_layers for MobileNetV3 (0..6): the last
    `trainable_layers` stages (STAGE_INDICES) trainable, every module before them frozen."""
    if not 0 <= trainable_layers <= len(STAGE_INDICES):
        raise ValueError(f"trainable_layers must be in 0..{len(STAGE_INDICES)}, received {trainable_layers}")
    first = NUM_FEATURES if trainable_layers == 0 else STAGE_INDICES[len(STAGE_INDICES) - trainable_layers]
    for layer in model.layers:
        if layer.weights:
            layer.trainable = int(layer.name.split(".")[0]) >= first


def torchvision_mobilenet_v3_large(weights=None, norm="frozen", trainable_layers=None, norm_epsilon=1e-5,
                                   feature_maps="strides", input_shape=(None, None, 3)):
    """torchvision's mobilenet_v3_large().features as a Keras model images -> {"C<l>": ...}.

    Args:
        weights: None, or a torchvision checkpoint path (.pth / .safetensors): a classification
            state_dict ("features.0.0.weight", ...) or a detection one ("backbone.body.0.0.weight").
        norm: "frozen" (FrozenBatchNorm) or "batchnorm" (Keras BatchNormalization).
        trainable_layers: stages left trainable, 0..6 (torchvision's trainable_backbone_layers);
            None: 3 with weights, 6 without.
        norm_epsilon: 1e-5 (torchvision's FrozenBatchNorm2d / BatchNorm2d in the detection models).
        feature_maps: "fpn" or "strides" (see the module docstring).
    """
    if feature_maps not in FEATURE_MAPS:
        raise ValueError(f"feature_maps must be one of {sorted(FEATURE_MAPS)}, received {feature_maps!r}")
    images = keras.Input(input_shape, name="images")
    x = TorchvisionNormalization(name="preprocessing")(images)
    features = []
    for index, units, residual in features_layout():
        shortcut = x
        for unit in units:
            if unit[0] == "se":
                x = _squeeze_excitation(x, unit[1], unit[3])
            else:
                _, path, _, cout, kernel, stride, groups, activation = unit
                x = _conv_norm_activation(x, path, cout, kernel, stride, groups, activation, norm, norm_epsilon)
        if residual:
            x = layers.Add(name=f"{index}.add")([x, shortcut])
        features.append(x)
    outputs = {name: features[index] for name, index in FEATURE_MAPS[feature_maps].items()}
    model = keras.Model(images, outputs, name="torchvision_mobilenet_v3_large_backbone")
    if weights is not None:
        from fpn_keras.convert.torchvision import load_torchvision_mobilenet_v3, read_weights

        state = read_weights(weights)
        prefix = "backbone.body." if any(k.startswith("backbone.body.") for k in state) else "features."
        load_torchvision_mobilenet_v3(model, state, prefix=prefix)
    if trainable_layers is None:
        trainable_layers = len(STAGE_INDICES) if weights is None else 3
    freeze_torchvision_mobilenet_v3(model, trainable_layers)
    return model
