"""fpn_keras: Feature Pyramid Network detectors for Keras 3.

The top-level names are imported lazily, so `fpn-keras --help` answers without
starting TensorFlow.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "FPNDetector": "fpn_keras.models.detector",
    "FasterRCNN": "fpn_keras.models.faster_rcnn",
    "RPN": "fpn_keras.models.rpn",
    "FeaturePyramid": "fpn_keras.layers.fpn",
    "RetinaNet": "fpn_keras.models.retinanet",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fpn_keras' has no attribute {name!r}")
