"""Exports: SavedModel for TF Serving, TFLite (builtins only) and ONNX, decoding and NMS inside."""

from fpn_keras.export.onnx import onnx
from fpn_keras.export.saved_model import saved_model
from fpn_keras.export.tflite import tflite

__all__ = ["onnx", "saved_model", "tflite"]
