"""fpn_keras: Feature Pyramid Network detectors for Keras 3.

Importing the package registers every serialisable class (layers, heads, the
detector, LR schedules), so `keras.saving.load_model("model.keras")` works in a
fresh process after `import fpn_keras`. Model code needs Keras only (TensorFlow is
imported where it is the point: data pipelines, export, distribution).

The command line (`fpn-keras`, `python -m fpn_keras`) imports the models lazily
instead, so that `--help` and recipe errors answer before TensorFlow starts (its
start-up lines ignore TF_CPP_MIN_LOG_LEVEL); it registers them when it loads a model.
"""

import importlib
import os
import sys

__version__ = "0.1.0"

_LAZY = {
    "FPNDetector": "fpn_keras.models.detector",
    "FasterRCNN": "fpn_keras.models.faster_rcnn",
    "RPN": "fpn_keras.models.rpn",
    "FeaturePyramid": "fpn_keras.layers.fpn",
    "RetinaNet": "fpn_keras.models.retinanet",
    "build_model": "fpn_keras.build",
}

__all__ = [*_LAZY, "__version__"]

_COMMAND_LINE = bool(sys.argv) and os.path.basename(sys.argv[0]) in ("fpn-keras", "-m")

if _COMMAND_LINE:
    # TensorFlow's C++ log: warnings and errors only, unless the user asked otherwise (before
    # its first import). Warnings stay visible: tf.data names an image it drops (decode error).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
else:
    importlib.import_module("fpn_keras.build")  # imports, and so registers, every model class


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fpn_keras' has no attribute {name!r}")
