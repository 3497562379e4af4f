"""`from_torchvision`: a torchvision detection model -> an FPNDetector with the same outputs,
and what its converters share (local checkpoint or preset download, COCO classes,
backbone / FPN module map, layout checks).

One module per model holds its layout and conventions: `torchvision_retinanet`
(retinanet_resnet50_fpn), `torchvision_faster_rcnn` (fasterrcnn_resnet50_fpn),
`torchvision_faster_rcnn_mobilenet` (fasterrcnn_mobilenet_v3_large_fpn),
`torchvision_retinanet_v2` and `torchvision_faster_rcnn_v2` (the *_v2 models), each with
`WEIGHTS_URL`, `NORM_EPSILON` (the backbone BatchNorm epsilon of its COCO_V1 weights),
`build_detector(num_classes, image_size, norm_epsilon)` (unbuilt) and
`load_state(detector, state_dict)`.
"""

import importlib
import os

import numpy as np

from fpn_keras.convert.torchvision import assign_torch_weights, read_weights

MODELS = {"retinanet_resnet50_fpn": "fpn_keras.convert.torchvision_retinanet",
          "fasterrcnn_resnet50_fpn": "fpn_keras.convert.torchvision_faster_rcnn",
          "fasterrcnn_mobilenet_v3_large_fpn": "fpn_keras.convert.torchvision_faster_rcnn_mobilenet",
          "retinanet_resnet50_fpn_v2": "fpn_keras.convert.torchvision_retinanet_v2",
          "fasterrcnn_resnet50_fpn_v2": "fpn_keras.convert.torchvision_faster_rcnn_v2"}
KNOWN_WEIGHTS = ("COCO_V1",)  # torchvision's <Model>_Weights.COCO_V1 (the module's WEIGHTS_URL)
DEFAULT_IMAGE_SIZE = (800, 1344)  # torchvision's short side 800, long side <= 1333, to a multiple of 32
TRANSFORM_SIZES = (800, 1333)  # GeneralizedRCNNTransform(min_size=800, max_size=1333)


def use_torchvision_transform(detector, min_size=800, max_size=1333):
    """Makes `detector` preprocess as torchvision's GeneralizedRCNNTransform: resize to
    short side `min_size`, long side at most `max_size`, a batch padded to a multiple of 32
    with the pixel mean (0 after normalising), boxes clipped to each image (FPNDetector's
    `short_side_resize` and `pad_value`). Returns the detector."""
    from fpn_keras.convert.resnet_layout import IMAGENET_MEAN

    detector.short_side_resize = (int(min_size), int(max_size))
    detector.pad_value = tuple(255.0 * m for m in IMAGENET_MEAN)
    return detector


def backbone_fpn_modules(detector, levels):
    """{torchvision module path: Keras layer} of the ResNet body and of the FPN's inner
    (1x1 lateral) and layer (3x3 output) blocks for backbone levels `levels` (finest first)."""
    neck = detector.neck
    modules = {f"backbone.body.{l.name}": l for l in detector.backbone.layers if l.weights}
    for i, level in enumerate(levels):
        modules[f"backbone.fpn.inner_blocks.{i}.0"] = neck.lateral[f"C{level}"]
        modules[f"backbone.fpn.layer_blocks.{i}.0"] = neck.output_convs[f"P{level}"]
    return modules


def assign_detection_weights(modules, state_dict, transforms):
    """`assign_torch_weights` of a whole detection checkpoint (its ResNet's fc ignored), after
    `transforms` {module path: function of a tensor} change those modules' weight and bias."""
    state = dict(state_dict)
    for module, transform in transforms.items():
        for key in (f"{module}.weight", f"{module}.bias"):
            if key in state:
                state[key] = transform(state[key])
    return assign_torch_weights(modules, state, "", ignore=("backbone.body.fc.",))


def check_layout(model, expected, wrong=()):
    """Raises a ValueError naming every {what: (ours, torchvision's)} that differs (and `wrong`)."""
    wrong = list(wrong) + [f"{name} {got!r} (torchvision: {want!r})"
                           for name, (got, want) in expected.items() if got != want]
    if wrong:
        raise ValueError(f"detector does not have torchvision {model}'s layout: " + "; ".join(wrong))


def coco_classes(num_classes=80, background=True):
    """(class names, COCO category ids) of an 80-class head (the real ids) or of
    torchvision's 91 ids ("__background__" and "N/A" for the unused ones; without id 0
    when `background` is False: 90 classes)."""
    from fpn_keras.convert.retinanet_layout import COCO_80_IDS
    from fpn_keras.models.detector import COCO_CLASS_NAMES

    if num_classes == 80:
        return list(COCO_CLASS_NAMES), list(COCO_80_IDS)
    if num_classes != 91:
        raise ValueError(f"num_classes must be 80 (COCO's classes) or 91 (torchvision's ids), received {num_classes}")
    names = dict(zip(COCO_80_IDS, COCO_CLASS_NAMES))
    ids = list(range(0 if background else 1, 91))
    return [names.get(i, "__background__" if i == 0 else "N/A") for i in ids], ids


def checkpoint_path(weights, model):
    """A local checkpoint: `weights` itself, or "COCO_V1": the file of the preset
    "torchvision/<model>_coco", downloaded once and hash-checked (convert.presets)."""
    if weights not in KNOWN_WEIGHTS:
        if not os.path.isfile(str(weights)):
            raise FileNotFoundError(f"checkpoint {weights} does not exist (pass a .pth / .safetensors "
                                    f"file, or one of {list(KNOWN_WEIGHTS)})")
        return str(weights)
    from fpn_keras.convert.presets import download_checkpoint

    return download_checkpoint(f"torchvision/{model}_coco")


def from_torchvision(model="retinanet_resnet50_fpn", weights=None, num_classes=80,
                     image_size=DEFAULT_IMAGE_SIZE, norm_epsilon=None, transform_sizes=TRANSFORM_SIZES):
    """The FPNDetector of a torchvision detection model, weights loaded (read without torch).

    model: one of MODELS. weights: None (untrained), a torchvision state_dict file (.pth /
    .safetensors), or "COCO_V1" (torchvision's file, downloaded once into the preset cache:
    convert.presets, preset "torchvision/<model>_coco"). num_classes: 80 (COCO's
    classes, `category_ids` their ids) or 91 (torchvision's ids). image_size: the canvas
    (height, width) stored in the model, which evaluate / export fit images into.
    transform_sizes: torchvision's (min_size, max_size), to which `predict_images` resizes
    as torchvision does (`use_torchvision_transform`).
    norm_epsilon: the backbone's BatchNorm epsilon; None: the model's NORM_EPSILON (0.0 for the
    v1 ResNet-50 COCO_V1 weights, which torchvision loads with overwrite_eps; 1e-5 for the v2
    models and fasterrcnn_mobilenet_v3_large_fpn), 1e-5 for a v1 model built without
    overwrite_eps. Detections on a canvas are torchvision's on the same
    (normalised, padded) tensor; boxes xyxy in canvas pixels.
    """
    if model not in MODELS:
        raise ValueError(f"unknown torchvision model {model!r}; choose from {list(MODELS)}")
    converter = importlib.import_module(MODELS[model])
    state = None if weights is None else read_weights(checkpoint_path(weights, model))
    epsilon = converter.NORM_EPSILON if norm_epsilon is None else norm_epsilon
    detector = use_torchvision_transform(converter.build_detector(num_classes, image_size, epsilon),
                                         *transform_sizes)
    detector(np.zeros((1, 64, 64, 3), np.float32))  # builds every layer
    if state is not None:
        converter.load_state(detector, state)
    return detector
