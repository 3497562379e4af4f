"""fpn_keras: Feature Pyramid Network detectors for Keras 3.

Importing the package registers every serialisable class (layers, heads, the
detector, LR schedules), so `keras.saving.load_model("model.keras")` works in a
fresh process after `import fpn_keras`. Model code needs Keras only (TensorFlow is
imported where it is the point: data pipelines, export, distribution).
"""

import os
import sys

__version__ = "0.1.0"

if os.path.basename(sys.argv[0] if sys.argv else "") in ("fpn-keras", "-m"):
    # The command line (`fpn-keras`, `python -m fpn_keras`): quiet TensorFlow's C++
    # start-up logging unless the user asked otherwise (must precede the first import).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fpn_keras.build import build_model  # noqa: E402  (imports and registers every model class)
from fpn_keras.layers.fpn import FeaturePyramid  # noqa: E402
from fpn_keras.models.detector import FPNDetector  # noqa: E402
from fpn_keras.models.faster_rcnn import FasterRCNN  # noqa: E402
from fpn_keras.models.retinanet import RetinaNet  # noqa: E402
from fpn_keras.models.rpn import RPN  # noqa: E402

__all__ = ["FPNDetector", "FasterRCNN", "FeaturePyramid", "RPN", "RetinaNet", "build_model", "__version__"]
