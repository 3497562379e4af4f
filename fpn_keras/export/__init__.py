"""Exports: SavedModel for TF Serving (with decoding and NMS inside)."""

from fpn_keras.export.saved_model import saved_model

__all__ = ["saved_model"]
