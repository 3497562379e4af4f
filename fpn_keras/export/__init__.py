"""Exports: SavedModel for TF Serving and TFLite (builtins only), decoding and NMS inside."""

from fpn_keras.export.saved_model import saved_model
from fpn_keras.export.tflite import tflite

__all__ = ["saved_model", "tflite"]
