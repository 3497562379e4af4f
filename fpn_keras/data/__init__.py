"""Datasets and tf.data input pipelines."""

from fpn_keras.data import pipeline, synthetic

__all__ = ["pipeline", "synthetic"]
