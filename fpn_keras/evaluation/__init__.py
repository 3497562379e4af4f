"""COCO evaluation utilities."""

from fpn_keras.evaluation.callback import CocoMetricsCallback
from fpn_keras.evaluation.coco_eval import CocoEvaluator, evaluate_model

__all__ = ["CocoEvaluator", "evaluate_model", "CocoMetricsCallback"]
