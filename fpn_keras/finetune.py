"""Fine-tuning a trained detector on other classes: everything is kept (backbone, FPN,
RPN, class and box towers, box head fc layers) except the layers whose shapes depend on
the number of classes, which each head names in `class_specific_layers()` (the head
protocol, fpn_keras.models.head). Those start from their fresh initialisation (RetinaNet:
class bias log(pi / (1 - pi)) with prior pi = 0.01; Faster R-CNN: N(0, 0.01) scores,
N(0, 0.001) deltas), as in detectron2 / torchvision fine-tuning recipes.

`FPNDetector.with_classes(class_names)` = `with_classes(detector, class_names)`;
recipes use it through `model.init_from` (fpn_keras.build).
"""

import numpy as np


def _class_weight_ids(detector):
    return {id(v) for layer in detector.head.class_specific_layers() for v in layer.weights}


def _kept_weights(detector):
    """The detector's weights outside its head's class-specific layers, in tracking order."""
    replaced = _class_weight_ids(detector)
    return [v for v in detector.weights if id(v) not in replaced]


def with_classes(detector, class_names, category_ids=None, image_size=None, bounding_box_format=None):
    """A new FPNDetector with `detector`'s architecture and weights, for `class_names`.

    class_names: the K new classes (a list, or `fpn_keras.data.ClassNames`, whose
        category_ids are taken unless `category_ids` is given). When they are exactly
        `detector.class_names`, nothing is replaced (continued training).
    category_ids: the dataset id of each new class (COCO results files), or None.
    image_size: the new canvas (height, width) stored in the model (default: the old one).
    bounding_box_format: of the new model's targets and detections (default: the old one's).
    The class-specific layers (`head.class_specific_layers()`) are freshly initialised;
    every other weight is copied exactly. The result is built and not compiled.
    """
    from fpn_keras.models.detector import FPNDetector

    if detector.head.class_agnostic:
        raise ValueError(f"{type(detector.head).__name__} has one class, 'object': it has no classes to replace")
    if not detector.built:
        raise ValueError("with_classes needs a built detector (call it on images, or load a saved one)")
    names = [str(name) for name in class_names]
    if not names:
        raise ValueError("class_names is empty: give the new classes")
    if category_ids is None:
        category_ids = getattr(class_names, "category_ids", None)
    same_classes = names == list(detector.class_names)
    config = detector.get_config()
    config.pop("name", None)
    head_config = dict(config["head"]["config"], num_classes=len(names))
    config.update(head={**config["head"], "config": head_config}, num_classes=len(names), class_names=names,
                  category_ids=None if category_ids is None else [int(i) for i in category_ids])
    if image_size is not None:
        config["image_size"] = [int(s) for s in image_size]
    if bounding_box_format is not None:
        config["bounding_box_format"] = bounding_box_format
    model = FPNDetector.from_config(config)
    model(np.zeros((1, 64, 64, 3), np.float32))  # builds every layer
    sources = detector.weights if same_classes else _kept_weights(detector)
    targets = model.weights if same_classes else _kept_weights(model)
    if len(sources) != len(targets):
        raise ValueError(f"the rebuilt detector has {len(targets)} weights to copy, the source {len(sources)}")
    for source, target in zip(sources, targets):
        if tuple(source.shape) != tuple(target.shape) or source.name != target.name:
            raise ValueError(f"weight {source.path} {tuple(source.shape)} has no counterpart in the rebuilt "
                             f"detector ({target.path} {tuple(target.shape)})")
        target.assign(source)
    return model


__all__ = ["with_classes"]
