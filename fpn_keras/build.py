"""The one place where recipe settings become objects."""

import math

import keras

from fpn_keras.config import Recipe
from fpn_keras.layers.fpn import FeaturePyramid
from fpn_keras.models.backbones import build_backbone
from fpn_keras.models.detector import HEADS, FPNDetector
from fpn_keras.models.rpn import RPN


def build_model(recipe: Recipe, class_names=None):
    cfg = recipe.model
    backbone = build_backbone(cfg.backbone, weights=cfg.backbone_weights, **cfg.backbone_args)
    head_args = dict(cfg.head_args)
    if cfg.head == "rpn":
        head = RPN(name="head", **head_args)
    else:
        if cfg.head == "faster_rcnn" and isinstance(head_args.get("rpn"), dict):
            # The RPN's settings form their own sub-section of head_args.
            head_args["rpn"] = RPN(name="rpn", **head_args["rpn"])
        head = HEADS[cfg.head](num_classes=cfg.num_classes, name="head", **head_args)
    neck = FeaturePyramid(head.min_level, head.max_level, cfg.fpn_channels, separable=cfg.fpn_separable,
                          name="neck", **getattr(head, "neck_args", {}))
    return FPNDetector(
        num_classes=head.num_classes,
        backbone=backbone,
        head=head,
        neck=neck,
        bounding_box_format=cfg.bounding_box_format,
        class_names=class_names,
    )


def build_optimizer(recipe: Recipe, steps_per_epoch):
    cfg = recipe.train
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(cfg.warmup_steps, total_steps // 2)
    if cfg.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else cfg.learning_rate, max(1, total_steps - warmup), alpha=0.01,
            warmup_target=cfg.learning_rate if warmup else None, warmup_steps=warmup)
    elif cfg.schedule == "step":
        # The FPN paper's schedule: divide by 10 at 2/3 and 8/9 of training.
        boundaries = [math.floor(total_steps * 2 / 3), math.floor(total_steps * 8 / 9)]
        learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [cfg.learning_rate, cfg.learning_rate / 10, cfg.learning_rate / 100])
    else:
        learning_rate = cfg.learning_rate
    common = {"learning_rate": learning_rate, "clipnorm": cfg.clipnorm}
    if cfg.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(momentum=cfg.momentum, weight_decay=cfg.weight_decay, **common)
    elif cfg.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(weight_decay=cfg.weight_decay, **common)
    else:
        optimizer = keras.optimizers.Adam(**common)
    if cfg.weight_decay:
        # No weight decay on biases and normalisation parameters (detectron2's default).
        optimizer.exclude_from_weight_decay(var_names=["bias", "beta", "gamma"])
    return optimizer
