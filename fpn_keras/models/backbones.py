"""Backbones: Keras functional models from RGB images (0..255) to {"C2".."C5"}.

Cl is the output of the last layer of stage l, with stride 2**l (FPN paper,
Section 3, "Bottom-up pathway"). Each backbone includes its own input
normalisation, so the detector always feeds 0..255 RGB pixels.
"""

import os

import keras
from keras import layers, ops

# ImageNet statistics: caffe-style ResNets from keras.applications expect BGR
# minus these means (in BGR order).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

RESNET_STAGE_OUTPUTS = {
    "resnet50": ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    "resnet101": ("conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out"),
}
TORCHVISION_RESNETS = {f"torchvision_resnet{depth}": depth for depth in (18, 34, 50, 101)}
BACKBONES = ("resnet50", "resnet101", "mobilenet_v3_large", "mobilenet_v3_small", "small_resnet",
             *TORCHVISION_RESNETS, "torchvision_mobilenet_v3_large")


@keras.saving.register_keras_serializable(package="fpn_keras")
class CaffePreprocessing(layers.Layer):
    """RGB 0..255 -> BGR minus the ImageNet mean (what keras.applications ResNets expect)."""

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        bgr = ops.flip(images, axis=-1)
        return bgr - ops.convert_to_tensor(_CAFFE_MEAN_BGR, self.compute_dtype)


@keras.saving.register_keras_serializable(package="fpn_keras")
class ScaleOffset(layers.Layer):
    """images * scale + offset, in keras.ops (Keras' Rescaling is a preprocessing
    layer that probes TensorFlow; this runs wherever the model runs)."""

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.offset = float(offset)

    def call(self, images):
        return ops.cast(images, self.compute_dtype) * self.scale + self.offset

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


def _load_applications_model(constructor, name, weights, **kwargs):
    """Builds a keras.applications model; turns download failures into clear errors."""
    if weights not in (None, "imagenet") and not os.path.isfile(str(weights)):
        raise ValueError(
            f"backbone weights must be None, 'imagenet' or a path to a weights file; "
            f"{weights!r} is not a file"
        )
    try:
        return constructor(include_top=False, weights=weights, **kwargs)
    except Exception as error:  # keras raises a bare Exception on a failed download
        if weights == "imagenet":
            raise RuntimeError(
                f"Could not load ImageNet weights for {name}: {error}. This machine may be "
                "offline. Download the '_notop' weights file from "
                "https://storage.googleapis.com/tensorflow/keras-applications/ on a machine "
                "with internet access and pass its local path as weights=..., or place it "
                "in ~/.keras/models/."
            ) from error
        raise


def _freeze(model, freeze_layers, freeze_batchnorm):
    for layer in model.layers:
        if any(layer.name.startswith(prefix) for prefix in freeze_layers):
            layer.trainable = False
        if freeze_batchnorm and isinstance(layer, layers.BatchNormalization):
            layer.trainable = False  # Keras 3: a frozen BN also runs in inference mode.


def resnet(name="resnet50", weights=None, freeze_at=0, freeze_batchnorm=False,
           input_shape=(None, None, 3)):
    """ResNet-50/101 (He et al.) from keras.applications with C2..C5 outputs.

    freeze_at: 0 trains everything; 1 freezes the stem (conv1); 2 freezes the
    stem and the C2 stage (detectron2's default with ImageNet weights).
    """
    if name not in RESNET_STAGE_OUTPUTS:
        raise ValueError(f"unknown ResNet {name!r}; choose from {sorted(RESNET_STAGE_OUTPUTS)}")
    constructor = {"resnet50": keras.applications.ResNet50,
                   "resnet101": keras.applications.ResNet101}[name]
    images = keras.Input(input_shape, name="images")
    x = CaffePreprocessing(name="preprocessing")(images)
    base = _load_applications_model(constructor, name, weights, input_tensor=x)
    _freeze(base, ("conv1",) + (("conv2",) if freeze_at >= 2 else ()) if freeze_at >= 1 else (),
            freeze_batchnorm)
    outputs = {f"C{l}": base.get_layer(layer_name).output
               for l, layer_name in zip(range(2, 6), RESNET_STAGE_OUTPUTS[name])}
    return keras.Model(images, outputs, name=f"{name}_backbone")


def _stage_ends_by_stride(model, size):
    """Indices of the last layer at each stride 4..32 (probed at `size` x `size`)."""
    ends = {}
    body = [layer for layer in model.layers if not isinstance(layer, layers.InputLayer)]
    for index, layer in enumerate(body):
        shape = layer.output.shape
        if len(shape) != 4 or shape[1] in (1, None):
            continue  # squeeze-excite pooling, etc.
        for level in range(2, 6):
            if shape[1] == size // 2**level:
                ends[level] = index
    return ends


def mobilenet_v3(name="mobilenet_v3_large", weights=None, freeze_batchnorm=False,
                 input_shape=(None, None, 3)):
    """MobileNetV3 (Howard et al., 2019) Large/Small with C2..C5: the last layer at each stride."""
    constructor = {"mobilenet_v3_large": keras.applications.MobileNetV3Large,
                   "mobilenet_v3_small": keras.applications.MobileNetV3Small}.get(name)
    if constructor is None:
        raise ValueError(f"unknown MobileNetV3 {name!r}; choose mobilenet_v3_large or mobilenet_v3_small")
    # Probe layer indices on a fixed size (layer auto-names differ between instances).
    probe = constructor(include_top=False, weights=None, input_shape=(256, 256, 3),
                        include_preprocessing=False)
    ends = _stage_ends_by_stride(probe, 256)
    images = keras.Input(input_shape, name="images")
    # Keras' own preprocessing for MobileNetV3 (0..255 -> -1..1), as a keras.ops layer.
    x = ScaleOffset(1.0 / 127.5, offset=-1.0, name="preprocessing")(images)
    base = _load_applications_model(constructor, name, weights, input_tensor=x,
                                    include_preprocessing=False)
    _freeze(base, (), freeze_batchnorm)
    body = [layer for layer in base.layers if not isinstance(layer, (layers.InputLayer, ScaleOffset))]
    outputs = {f"C{l}": body[ends[l]].output for l in range(2, 6)}
    return keras.Model(images, outputs, name=f"{name}_backbone")


def small_resnet(widths=(32, 64, 128, 256), blocks=(1, 1, 1, 1), input_shape=(None, None, 3)):
    """A small ResNet-style backbone for demos and tests (trains from scratch on CPU).

    Stem: 3x3 stride-2 conv. Stage l (2..5): a stride-2 basic block with a
    projection shortcut, then `blocks[l-2] - 1` basic blocks; C_l has stride 2**l.
    """
    if len(widths) != 4 or len(blocks) != 4:
        raise ValueError(f"widths and blocks need 4 values (C2..C5), received {widths!r}, {blocks!r}")

    def conv_bn(x, filters, strides, name, relu=True):
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                          kernel_initializer="he_normal", name=f"{name}_conv")(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    def basic_block(x, filters, strides, name):
        shortcut = x
        if strides != 1 or x.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                     name=f"{name}_proj")(x)
            shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
        y = conv_bn(x, filters, strides, f"{name}_a")
        y = conv_bn(y, filters, 1, f"{name}_b", relu=False)
        return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))

    images = keras.Input(input_shape, name="images")
    x = ScaleOffset(1.0 / 127.5, offset=-1.0, name="preprocessing")(images)
    x = conv_bn(x, widths[0], 2, "stem")
    outputs = {}
    for level, (filters, num_blocks) in enumerate(zip(widths, blocks), start=2):
        for i in range(num_blocks):
            x = basic_block(x, filters, 2 if i == 0 else 1, f"C{level}_block{i}")
        outputs[f"C{level}"] = x
    return keras.Model(images, outputs, name="small_resnet_backbone")


def build_backbone(name="resnet50", weights=None, **kwargs):
    """Backbone by name: one of BACKBONES. `weights`: None, "imagenet" or a local file path
    (torchvision_resnet*, torchvision_mobilenet_v3_large: None or a torchvision .pth /
    .safetensors file, see `fpn_keras.models.torchvision_resnet` / `torchvision_mobilenet_v3`)."""
    if name in TORCHVISION_RESNETS:
        from fpn_keras.models.torchvision_resnet import torchvision_resnet

        if weights == "imagenet":
            raise ValueError(f"{name}: pass the path of a torchvision checkpoint as weights "
                             "(e.g. resnet50-0676ba61.pth); nothing is downloaded")
        return torchvision_resnet(TORCHVISION_RESNETS[name], weights=weights, **kwargs)
    if name == "torchvision_mobilenet_v3_large":  # C2..C5 at strides 4..32 (feature_maps="strides")
        from fpn_keras.models.torchvision_mobilenet_v3 import torchvision_mobilenet_v3_large

        if weights == "imagenet":
            raise ValueError(f"{name}: pass the path of a torchvision checkpoint as weights "
                             "(e.g. mobilenet_v3_large-8738ca79.pth); nothing is downloaded")
        return torchvision_mobilenet_v3_large(weights=weights, **kwargs)
    if name in RESNET_STAGE_OUTPUTS:
        return resnet(name, weights=weights, **kwargs)
    if name.startswith("mobilenet_v3"):
        return mobilenet_v3(name, weights=weights, **kwargs)
    if name == "small_resnet":
        if weights is not None:
            raise ValueError("small_resnet has no pretrained weights; pass weights=None")
        return small_resnet(**kwargs)
    raise ValueError(f"unknown backbone {name!r}; choose from {BACKBONES}")
