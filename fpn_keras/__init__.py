"""fpn_keras: Feature Pyramid Network detectors for Keras 3."""

__version__ = "0.1.0"
