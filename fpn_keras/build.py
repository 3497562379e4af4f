"""The one place where recipe settings become objects."""

import inspect
import os

import keras

from fpn_keras import config as config_lib
from fpn_keras import schedules
from fpn_keras.config import Recipe
from fpn_keras.schedules import WarmupStepDecay
from fpn_keras.layers.fpn import FeaturePyramid
from fpn_keras.models.backbones import (BACKBONES, TORCHVISION_RESNETS, build_backbone, mobilenet_v3,
                                        resnet, small_resnet)
from fpn_keras.models.detector import HEADS, FPNDetector
from fpn_keras.models.torchvision_mobilenet_v3 import torchvision_mobilenet_v3_large
from fpn_keras.models.torchvision_resnet import torchvision_resnet


BACKBONE_CONSTRUCTORS = {"resnet50": resnet, "resnet101": resnet, "mobilenet_v3_large": mobilenet_v3,
                         "mobilenet_v3_small": mobilenet_v3, "small_resnet": small_resnet,
                         **{name: torchvision_resnet for name in TORCHVISION_RESNETS},
                         "torchvision_mobilenet_v3_large": torchvision_mobilenet_v3_large}


def _parameters(function, exclude):
    return [name for name, p in inspect.signature(function).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name not in exclude]


def _check_args(args, function, where, exclude=()):
    allowed = _parameters(function, {"self", *exclude})
    for key in args:
        if key not in allowed:
            raise config_lib.RecipeError(
                f"unknown key '{where}.{key}'{config_lib.suggest(key, allowed)}; "
                f"{function.__qualname__.split('.')[0]} takes {sorted(allowed)}")


def check_model_args(recipe: Recipe):
    """Checks model.backbone_args and model.head_args against the signatures of the
    constructors they feed, before any data is loaded: an unknown key is a RecipeError
    (exit 2) with a close-match suggestion."""
    cfg = recipe.model
    if cfg.backbone not in BACKBONE_CONSTRUCTORS:
        raise config_lib.RecipeError(f"model.backbone: unknown backbone {cfg.backbone!r}"
                                     f"{config_lib.suggest(cfg.backbone, BACKBONES)}; choose from {list(BACKBONES)}")
    _check_args(cfg.backbone_args, BACKBONE_CONSTRUCTORS[cfg.backbone], "model.backbone_args",
                exclude=("name", "weights", "depth"))
    head = HEADS[cfg.head]
    for key, sub_head in head.sub_heads.items():
        if isinstance(cfg.head_args.get(key), dict):
            _check_args(cfg.head_args[key], sub_head.__init__, f"model.head_args.{key}", exclude=("name",))
    _check_args(cfg.head_args, head.__init__, "model.head_args", exclude=("num_classes", "name"))
    if cfg.init_from is not None:
        check_init_from(recipe)


def check_init_from(recipe: Recipe):
    """model.init_from: a known preset (of that head) or an existing .keras file, and no
    architecture settings beside it (they come from the trained detector)."""
    from fpn_keras.convert.presets import PresetError, preset

    cfg, defaults = recipe.model, config_lib.ModelConfig()
    if HEADS[cfg.head].class_agnostic:
        raise config_lib.RecipeError(f"model.init_from: the {cfg.head!r} head has no classes to fine-tune")
    if str(cfg.init_from).endswith(".keras"):
        if not os.path.isfile(cfg.init_from):
            raise config_lib.RecipeError(f"model.init_from: {cfg.init_from!r} does not exist")
    else:
        try:
            row = preset(cfg.init_from)
        except PresetError as error:
            raise config_lib.RecipeError(f"model.init_from: {error}, or a .keras file") from None
        if row["head"] != cfg.head:
            raise config_lib.RecipeError(f"model.init_from: preset {cfg.init_from!r} has a {row['head']!r} head, "
                                         f"the recipe's model.head is {cfg.head!r}")
    fixed = [f"model.{key}" for key in ("backbone_args", "head_args", "fpn_channels", "fpn_separable",
                                        "backbone_weights") if getattr(cfg, key) != getattr(defaults, key)]
    if fixed:
        raise config_lib.RecipeError(f"model.init_from ({cfg.init_from}) sets the architecture: remove {fixed}")


def init_model(recipe: Recipe, class_names, image_size):
    """The recipe's model.init_from detector (preset or .keras file) with its class-specific
    layers replaced for `class_names` (fpn_keras.finetune)."""
    cfg = recipe.model
    if cfg.init_from.endswith(".keras"):
        source = keras.saving.load_model(cfg.init_from, safe_mode=True)
    else:
        source = FPNDetector.from_preset(cfg.init_from)
    if type(source.head) is not HEADS[cfg.head]:
        raise config_lib.RecipeError(f"model.init_from: {cfg.init_from} has a {type(source.head).__name__} head, "
                                     f"the recipe's model.head is {cfg.head!r}")
    if class_names is None:
        class_names = [str(i) for i in range(cfg.num_classes)]
    return source.with_classes(class_names, image_size=image_size, bounding_box_format=cfg.bounding_box_format)


def build_model(recipe: Recipe, class_names=None):
    cfg = recipe.model
    image_size = None if recipe.data.image_size == config_lib.AUTO else recipe.data.image_size
    if cfg.init_from is not None:
        model = init_model(recipe, class_names, image_size)
        if recipe.train.sync_batchnorm:
            synchronize_batchnorm(model, recipe)
        return model
    backbone = build_backbone(cfg.backbone, weights=cfg.backbone_weights, **cfg.backbone_args)
    head = HEADS[cfg.head].from_args(cfg.num_classes, name="head", **cfg.head_args)
    if head.class_agnostic:
        class_names = ["object"]
    neck = FeaturePyramid(head.min_level, head.max_level, cfg.fpn_channels, separable=cfg.fpn_separable,
                          name="neck", **head.neck_args)
    model = FPNDetector(
        num_classes=head.num_classes,
        backbone=backbone,
        head=head,
        neck=neck,
        bounding_box_format=cfg.bounding_box_format,
        class_names=class_names,
        image_size=image_size,
    )
    if recipe.train.sync_batchnorm:
        synchronize_batchnorm(model, recipe)
    return model


def synchronize_batchnorm(model, recipe):
    """train.sync_batchnorm: BatchNormalization(synchronized=True) on the model's trainable
    BatchNormalization layers (`distribute.set_batchnorm_synchronized`) -> their names.
    A RecipeError when there is none (FrozenBatchNorm backbones, GroupNorm or no norm in
    the FPN and heads) or under JAX (Keras' synchronized BN is TensorFlow-only; under
    `keras.distribution.DataParallel` the batch statistics are global already)."""
    from fpn_keras import distribute

    if keras.backend.backend() != "tensorflow":
        raise config_lib.RecipeError(
            "train.sync_batchnorm needs the TensorFlow backend (under JAX's DataParallel the "
            "BatchNormalization statistics are those of the global batch without it)")
    names = distribute.set_batchnorm_synchronized(model, True)
    if not names:
        cfg = recipe.model
        raise config_lib.RecipeError(
            f"train.sync_batchnorm: the model has no trainable BatchNormalization layer (backbone "
            f"{cfg.backbone!r} with {cfg.backbone_args or 'its default'} backbone_args, head_args "
            f"{cfg.head_args}); nothing to synchronise: use a backbone with trainable BatchNormalization "
            "or norm: batch in the FPN / heads, or remove train.sync_batchnorm")
    return names


def base_learning_rate(recipe: Recipe):
    """The recipe's learning rate, scaled linearly with the global batch when asked
    (train.scale_lr_with_batch: learning_rate is for reference_batch_size images)."""
    cfg = recipe.train
    if cfg.scale_lr_with_batch:
        return cfg.learning_rate * cfg.batch_size / cfg.reference_batch_size
    return cfg.learning_rate


def build_schedule(recipe: Recipe, total_steps):
    """The learning rate (a schedule or a float) for `total_steps` optimizer updates."""
    cfg = recipe.train
    lr = base_learning_rate(recipe)
    total_steps = max(1, int(total_steps))
    warmup = min(cfg.warmup_steps, total_steps // 2)
    factor = cfg.warmup_factor
    if cfg.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            lr * factor if warmup else lr, max(1, total_steps - warmup), alpha=0.01,
            warmup_target=lr if warmup else None, warmup_steps=warmup)
    if cfg.schedule == "step":
        # The FPN paper's schedule: linear warmup, divide by 10 at 2/3 and 8/9 of training
        # (or at train.lr_steps).
        boundaries = schedules.lr_boundaries(cfg, total_steps)
        return WarmupStepDecay(lr, boundaries, warmup, factor)
    if warmup:  # constant after a linear warmup
        return WarmupStepDecay(lr, [], warmup, factor)
    return lr


def total_training_steps(recipe: Recipe, steps_per_epoch):
    return schedules.schedule_steps(recipe.train, steps_per_epoch)[2]


def build_optimizer(recipe: Recipe, steps_per_epoch):
    """SGD (momentum) / AdamW / Adam with the recipe's schedule; weight decay not on
    biases and normalisation parameters; clipping per variable (clipnorm) or by the
    global norm (global_clipnorm); wrapped in a LossScaleOptimizer for mixed_float16.

    train.use_ema / ema_momentum / ema_overwrite_frequency: Keras' weight EMA (the
    optimizer holds the averages of the trainable weights; `fpn_keras.training` evaluates
    and saves them). train.gradient_accumulation_steps = k: Keras' accumulation: each
    batch's gradients are added up and every k-th batch applies their mean (clipping
    and weight decay once per update). A step of `fit` (train.steps, warmup_steps,
    lr_steps, checkpoint_every_n_steps) stays one batch: the LR schedule is read at the
    batch count (Keras' rule), `optimizer.iterations` counts updates (batches // k). Under
    mixed_float16 the LossScaleOptimizer unscales before accumulating and skips a batch
    with non-finite gradients (it then joins neither the sum nor the count).
    """
    cfg = recipe.train
    learning_rate = build_schedule(recipe, total_training_steps(recipe, steps_per_epoch))
    common = {"learning_rate": learning_rate, "clipnorm": cfg.clipnorm,
              "global_clipnorm": cfg.global_clipnorm}
    if cfg.use_ema:
        common.update(use_ema=True, ema_momentum=cfg.ema_momentum,
                      ema_overwrite_frequency=cfg.ema_overwrite_frequency)
    if cfg.gradient_accumulation_steps and cfg.gradient_accumulation_steps > 1:
        common["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
    if cfg.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(momentum=cfg.momentum, weight_decay=cfg.weight_decay or None,
                                         **common)
    elif cfg.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(weight_decay=cfg.weight_decay, **common)
    else:
        optimizer = keras.optimizers.Adam(**common)
    if cfg.weight_decay:
        # No weight decay on biases and normalisation parameters (detectron2's default).
        optimizer.exclude_from_weight_decay(var_names=["bias", "beta", "gamma"])
    if cfg.mixed_precision == "mixed_float16":
        # Dynamic loss scaling keeps float16 gradients from underflowing.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
