"""fpn_keras: Feature Pyramid Network detectors for Keras 3."""

__version__ = "0.1.0"

from fpn_keras.layers.fpn import FeaturePyramid  # noqa: E402
from fpn_keras.models.detector import FPNDetector  # noqa: E402
from fpn_keras.models.retinanet import RetinaNet  # noqa: E402

__all__ = ["FPNDetector", "FeaturePyramid", "RetinaNet", "__version__"]
