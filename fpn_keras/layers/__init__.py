from fpn_keras.layers.dense_heads import RetinaNetHead
from fpn_keras.layers.fpn import FeaturePyramid

__all__ = ["FeaturePyramid", "RetinaNetHead"]
