"""Recipes: plain YAML data validated against dataclasses.

A recipe has three sections, `model`, `data` and `train`; each field carries
the name of the constructor argument it feeds. Unknown keys, wrong types and
missing required fields (REQUIRED) are errors naming the key, the file and the
allowed values, with a close-match suggestion for typos. A recipe may start from
another one with a top-level `base: NAME` (deep-merged, the referencing file wins)
or start one section from another recipe's section (`data: {base: NAME, ...}`);
cycles are errors. YAML is read with `yaml.safe_load` (no object construction from tags).
"""

import dataclasses
import difflib
import os
import typing

import yaml

from fpn_keras import recipe_files


class RecipeError(ValueError):
    """A recipe or an override is invalid."""


class DataError(RecipeError):
    """The data a recipe (or --data) names cannot be used: nothing usable in it, an
    unknown format, classes that do not match. Found before training starts; the CLI
    exits 2, like other configuration errors."""


@dataclasses.dataclass
class ModelConfig:
    num_classes: int = 80
    backbone: str = "resnet50"
    backbone_weights: typing.Optional[str] = None
    backbone_args: dict = dataclasses.field(default_factory=dict)
    fpn_channels: int = 256
    fpn_separable: bool = False
    head: str = "retinanet"
    head_args: dict = dataclasses.field(default_factory=dict)
    bounding_box_format: str = "xyxy"
    # Start from a trained detector: a preset name (fpn_keras.convert.presets.PRESETS, e.g.
    # torchvision/retinanet_resnet50_fpn_coco) or a .keras file. Its architecture and weights
    # are kept, its class-specific layers replaced for the data's classes (fpn_keras.finetune);
    # model.head must name its head; backbone_args, head_args and fpn_* cannot be set with it.
    init_from: typing.Optional[str] = None


@dataclasses.dataclass
class DataConfig:
    # A dataset spec (see fpn_keras.data.load), or a list of specs concatenated (VOC07+12).
    train: typing.Union[str, typing.List[str]] = "synthetic"
    # A dataset spec, or "holdout": a fixed, seeded `holdout_fraction` of data.train's
    # images (which training then does not use).
    val: str = "synthetic"
    train_split: str = "train"
    val_split: str = "val"
    holdout_fraction: float = 0.1
    # Extra keyword arguments for fpn_keras.data.load (e.g. tfds data_dir, download).
    load_args: dict = dataclasses.field(default_factory=dict)
    # [short_side, max_size]: detectron2-style resize for evaluation (and training
    # without augment.short_sides); None fills the image_size canvas.
    resize: typing.Optional[typing.List[float]] = None
    # Training augmentation: fields of fpn_keras.data.transforms.Augment (AUGMENT_KEYS);
    # None = random horizontal flips only.
    augment: typing.Optional[dict] = None
    # [height, width] of the input canvas (multiples of 32), or "auto": the median long
    # side of the training images rounded to a multiple of 32, at most max_image_size.
    image_size: typing.Union[str, typing.List[int]] = dataclasses.field(default_factory=lambda: [128, 128])
    max_image_size: int = 640
    # Ground-truth boxes per image after padding, or "auto": the most boxes in one
    # training image (COCO/VOC folders; 100 when the loader cannot tell).
    max_boxes: typing.Union[str, int] = 100
    # Image counts of the synthetic generator (the demo's data); other datasets use all
    # their images.
    num_train_images: typing.Optional[int] = None
    num_val_images: typing.Optional[int] = None
    seed: int = 0
    # Keep the decoded images in memory: true | false | null (auto: when the decoded
    # training set is estimated under 2 GiB; the synthetic data always).
    cache: typing.Optional[bool] = None


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = 16
    epochs: int = 12
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    schedule: str = "cosine"
    # Total optimizer steps (iterations); when set it replaces `epochs` (see fpn_keras.schedules.schedule_steps).
    steps: typing.Optional[int] = None
    # Step-schedule boundaries (LR x0.1 at each): fractions of the total steps (all < 1)
    # or iteration numbers (all >= 1); None = [2/3, 8/9] (the 1x schedule's 60k/80k of 90k).
    lr_steps: typing.Optional[typing.List[float]] = None
    clipnorm: typing.Optional[float] = None
    # The schedule is lengthened to at least this many optimizer steps (whole epochs),
    # so that small datasets get enough steps to learn.
    min_steps: typing.Optional[int] = None
    eval_every_n_epochs: int = 1
    # When set, replaces eval_every_n_epochs: evaluate every this many steps (rounded to
    # whole epochs, at least one).
    eval_every_n_steps: typing.Optional[int] = None
    # Also report Pascal VOC mAP at IoU 0.5 (VOC2007 11-point and VOC2010+ area) beside
    # COCO's at every evaluation (val_VOC07_mAP, val_VOC_mAP; fpn_keras.evaluation.voc_eval).
    voc_metric: bool = False
    seed: int = 0
    # --- scale and robustness (fpn_keras.distribute, fpn_keras.training) ---
    # tf.distribute strategy: auto | default | mirrored | multi_worker | tpu | one_device:<device>.
    strategy: str = "auto"
    # Keras dtype policy while training: None (float32) | mixed_float16 | mixed_bfloat16.
    mixed_precision: typing.Optional[str] = None
    # Linear warmup starts at learning_rate * warmup_factor (detectron2: 0.001).
    warmup_factor: float = 0.001
    # Gradient clipping by the global norm of all gradients (clipnorm: per variable).
    global_clipnorm: typing.Optional[float] = None
    # Linear scaling rule: learning_rate is for reference_batch_size images per step
    # (the paper: 0.02 for 16); the run uses learning_rate * batch_size / reference_batch_size.
    scale_lr_with_batch: bool = False
    reference_batch_size: int = 16
    # Checkpoints (weights + optimizer state + step) in OUT/checkpoints every N optimizer
    # steps (0: at epoch ends only), the last `keep_checkpoints` kept.
    checkpoint_every_n_steps: int = 0
    keep_checkpoints: int = 3
    # --- training options of the peers, on Keras' own (fpn_keras.build.build_optimizer) ---
    # Weight EMA (Polyak averaging; d2go's MODEL_EMA for detectron2, decay 0.999;
    # ultralytics' ModelEMA): the optimizer keeps average = ema_momentum * average +
    # (1 - ema_momentum) * weights after every batch (the first copies the weights);
    # evaluation, best.keras and model.keras use the averaged trainable weights,
    # checkpoints hold both.
    use_ema: bool = False
    ema_momentum: float = 0.999
    # Every N optimizer steps the model's weights are overwritten by the average (None: never).
    ema_overwrite_frequency: typing.Optional[int] = None
    # BatchNormalization(synchronized=True) on every trainable BatchNormalization layer:
    # batch statistics over the global batch under a multi-replica tf.distribute strategy.
    sync_batchnorm: bool = False
    # Average the gradients of this many batches into one optimizer update (None: every
    # batch). A "step" (train.steps, warmup_steps, lr_steps, checkpoints) stays one batch;
    # the EMA is updated after every batch (per update: ema_momentum ** k).
    gradient_accumulation_steps: typing.Optional[int] = None


@dataclasses.dataclass
class Recipe:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self):
        # "section.key" -> where its value came from ("recipe NAME", "--set", "--data", ...);
        # keys not listed are dataclass defaults. Not a field: not written to recipe.yaml.
        self.origins = {}

    def to_dict(self):
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
CHOICES = {
    ("train", "optimizer"): ("sgd", "adamw", "adam"),
    ("train", "schedule"): ("cosine", "step", "constant"),
    ("train", "mixed_precision"): (None, "mixed_float16", "mixed_bfloat16"),
    ("model", "head"): ("retinanet", "faster_rcnn", "rpn"),
}


# Fields of fpn_keras.data.transforms.Augment (kept here so loading a recipe needs no
# TensorFlow; tests/test_config.py checks the two agree).
AUGMENT_KEYS = ("flip", "short_sides", "max_size", "scale_range", "min_area_fraction",
                "brightness", "contrast", "saturation")
# Keys every recipe file must set (after `base` merging). The dataclass defaults are for
# Python use; a recipe that forgot its number of classes or its data is an error.
REQUIRED = (("model", "num_classes"), ("model", "backbone"), ("model", "head"),
            ("data", "train"), ("data", "val"), ("data", "image_size"))
BASE_KEY = "base"
AUTO = "auto"  # data.image_size / data.max_boxes: taken from the training data
HOLDOUT = "holdout"  # data.val: a held-out fraction of data.train


def suggest(key, allowed):
    close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(annotation):
    origin = typing.get_origin(annotation)
    if origin in (list, typing.List):
        args = typing.get_args(annotation)
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(args[0], args[0])}" if args else "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            dict: "a mapping", list: "a list"}.get(annotation, str(annotation))


def _check_type(value, annotation, where):
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[X], Union[str, List[str]]
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return value
        options = [a for a in args if a is not type(None)]
        if len(options) > 1:
            for option in options:
                try:
                    return _check_type(value, option, where)
                except RecipeError:
                    continue
            names = " or ".join(_type_name(a) for a in options)
            raise RecipeError(f"{where}: expected {names}, received {value!r}")
        annotation = options[0]
        origin = typing.get_origin(annotation)
    if origin in (list, typing.List) or annotation is list:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected {_type_name(annotation)}, received {value!r}")
        item_type = (typing.get_args(annotation) or (None,))[0]
        if item_type is None:
            return list(value)
        return [_check_type(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise RecipeError(f"{where}: expected true/false, received {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RecipeError(f"{where}: expected an integer, received {value!r}")
    if annotation in (float, str, dict) and not isinstance(value, annotation):
        raise RecipeError(f"{where}: expected {_type_name(annotation)}, received {value!r}")
    return value


def _check_recipe(recipe, source):
    """Checks that involve several fields or values inside a field."""
    data, train = recipe.data, recipe.train
    if isinstance(data.train, list) and not data.train:
        raise RecipeError(f"{source}: data.train: expected a dataset spec or a non-empty list of specs")
    if isinstance(data.image_size, str):
        if data.image_size != AUTO:
            raise RecipeError(f"{source}: data.image_size: expected [height, width] or '{AUTO}', "
                              f"received {data.image_size!r}")
    elif len(data.image_size) != 2 or min(data.image_size) <= 0 or any(s % 32 for s in data.image_size):
        raise RecipeError(f"{source}: data.image_size: expected [height, width], positive multiples of 32, "
                          f"or '{AUTO}', received {data.image_size!r}")
    if isinstance(data.max_boxes, str) and data.max_boxes != AUTO or \
            not isinstance(data.max_boxes, str) and data.max_boxes <= 0:
        raise RecipeError(f"{source}: data.max_boxes: expected a positive integer or '{AUTO}', "
                          f"received {data.max_boxes!r}")
    if not 0.0 < data.holdout_fraction < 1.0:
        raise RecipeError(f"{source}: data.holdout_fraction must lie in (0, 1), received {data.holdout_fraction!r}")
    if data.val == HOLDOUT and isinstance(data.train, list) and len(data.train) > 1:
        raise RecipeError(f"{source}: data.val: '{HOLDOUT}' needs a single data.train spec, received {data.train!r}")
    if data.resize is not None and (len(data.resize) != 2 or min(data.resize) <= 0):
        raise RecipeError(f"{source}: data.resize: expected [short_side, max_size] > 0, received {data.resize!r}")
    if data.augment is not None:
        for key in data.augment:
            if key not in AUGMENT_KEYS:
                raise RecipeError(f"{source}: unknown key 'data.augment.{key}'{suggest(key, AUGMENT_KEYS)}; "
                                  f"allowed keys in 'data.augment': {list(AUGMENT_KEYS)}")
    for key in ("batch_size", "epochs", "steps", "min_steps", "eval_every_n_steps", "max_image_size"):
        section = "data" if key == "max_image_size" else "train"
        value = getattr(data if section == "data" else train, key)
        if value is not None and value <= 0:
            raise RecipeError(f"{source}: {section}.{key} must be positive, received {value!r}")
    if not 0.0 <= train.ema_momentum < 1.0:
        raise RecipeError(f"{source}: train.ema_momentum must lie in [0, 1), received {train.ema_momentum!r}")
    if train.ema_overwrite_frequency is not None and not train.use_ema:
        raise RecipeError(f"{source}: train.ema_overwrite_frequency needs train.use_ema: true")
    if train.ema_overwrite_frequency is not None and train.ema_overwrite_frequency < 1:
        raise RecipeError(f"{source}: train.ema_overwrite_frequency must be a positive integer or null, "
                          f"received {train.ema_overwrite_frequency!r}")
    accumulation = train.gradient_accumulation_steps
    if accumulation is not None and accumulation < 1:
        raise RecipeError(f"{source}: train.gradient_accumulation_steps must be a positive integer or null, "
                          f"received {accumulation!r}")
    if train.lr_steps is not None:
        steps = train.lr_steps
        if train.schedule != "step":
            raise RecipeError(f"{source}: train.lr_steps needs train.schedule: step "
                              f"(received schedule {train.schedule!r})")
        fractions = all(0 < s < 1 for s in steps)
        iterations = all(s >= 1 and float(s).is_integer() for s in steps)
        if not steps or not (fractions or iterations) or sorted(set(steps)) != list(steps):
            raise RecipeError(f"{source}: train.lr_steps must be increasing fractions of training (0 < f < 1) "
                              f"or increasing iteration numbers, received {steps!r}")
        if iterations and train.steps is not None and steps[-1] >= train.steps:
            raise RecipeError(f"{source}: train.lr_steps {steps!r} must lie before train.steps={train.steps}")


def recipe_from_dict(data, source="<dict>", required=True):
    """Validates plain data (as read from YAML) into a `Recipe`.

    A top-level `base:` names another recipe merged underneath (see `fpn_keras.recipe_files.resolve_base`).
    Unknown keys (with a close-match suggestion), wrong types, values outside their
    choices and, with `required`, missing REQUIRED keys raise `RecipeError` naming the
    key, `source` and the allowed values. `data` is not modified.
    """
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping with sections {sorted(SECTIONS)}")
    data = recipe_files.resolve_base(data, source)
    allowed_top = sorted(SECTIONS) + [BASE_KEY]
    for key in data:
        if key not in SECTIONS:
            raise RecipeError(f"{source}: unknown section '{key}'{suggest(key, allowed_top)}; "
                              f"allowed: {allowed_top}")
    sections = {}
    for name, cls in SECTIONS.items():
        values = data.get(name)
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise RecipeError(f"{source}: section '{name}' must be a mapping, received {values!r}")
        values = dict(values)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        for key, value in values.items():
            if key not in fields:
                raise RecipeError(
                    f"{source}: unknown key '{name}.{key}'{suggest(key, fields)}; "
                    f"allowed keys in '{name}': {sorted(fields)}")
            values[key] = _check_type(value, hints[key], f"{source}: {name}.{key}")
            choices = CHOICES.get((name, key))
            if choices and values[key] not in choices:
                raise RecipeError(
                    f"{source}: {name}.{key} must be one of {list(choices)}, received {values[key]!r}")
        if required:
            for section, key in REQUIRED:
                if section == name and key not in values:
                    raise RecipeError(f"{source}: missing required key '{name}.{key}' "
                                      f"(required keys: {[f'{s}.{k}' for s, k in REQUIRED]})")
        sections[name] = cls(**values)
    recipe = Recipe(**sections)
    _check_recipe(recipe, source)
    return recipe


def apply_override(data, assignment):
    """Applies 'section.key=value' (value parsed as YAML) to plain recipe data.

    The path is checked against the schema (section, key; deeper only inside mapping
    fields such as model.head_args or data.augment); the value is validated with the
    whole recipe afterwards.
    """
    if not isinstance(assignment, str) or "=" not in assignment:
        raise RecipeError(f"override {assignment!r} must look like section.key=value")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise RecipeError(f"override {assignment!r}: name a section and a key, e.g. train.batch_size=8")
    section, key = keys[0], keys[1]
    if section not in SECTIONS:
        raise RecipeError(f"override {assignment!r}: unknown section '{section}'"
                          f"{suggest(section, SECTIONS)}; allowed: {sorted(SECTIONS)}")
    hints = typing.get_type_hints(SECTIONS[section])
    if key not in hints:
        raise RecipeError(f"override {assignment!r}: unknown key '{section}.{key}'{suggest(key, hints)}; "
                          f"allowed keys in '{section}': {sorted(hints)}")
    if len(keys) > 2 and dict not in (hints[key], *typing.get_args(hints[key])):
        raise RecipeError(f"override {assignment!r}: '{section}.{key}' is not a mapping")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise RecipeError(f"override {assignment!r}: value is not valid YAML") from error
    node = data
    for name in keys[:-1]:
        if node.get(name) is None:
            node[name] = {}
        node = node[name]
        if not isinstance(node, dict):
            raise RecipeError(f"override {assignment!r}: '{name}' is not a mapping")
    node[keys[-1]] = value
    return data


def load_recipe(name_or_path, overrides=()):
    """Reads a recipe by name (in recipes/) or path, merges its `base`, applies the
    `section.key=value` overrides and validates. Errors in the file name the file;
    errors an override introduces name the override."""
    path = recipe_files.resolve_recipe_path(name_or_path)
    data = recipe_files.resolve_base(recipe_files.read_yaml(path), path)
    recipe = recipe_from_dict(data, source=path)
    origins = {f"{section}.{key}": f"recipe {os.path.basename(path)}"
               for section, values in data.items() if isinstance(values, dict) for key in values}
    if overrides:
        for assignment in overrides:
            data = apply_override(data, assignment)
            origins[".".join(assignment.split("=", 1)[0].strip().split(".")[:2])] = "--set"
        recipe = recipe_from_dict(data, source=f"{path} with --set {' '.join(overrides)}")
    recipe.origins = origins
    return recipe


def dump_recipe(recipe, path):
    with open(path, "w") as f:
        yaml.safe_dump(recipe.to_dict(), f, sort_keys=False)
