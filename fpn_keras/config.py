"""Recipes: plain YAML data validated against dataclasses.

A recipe has three sections, `model`, `data` and `train`; each field carries
the name of the constructor argument it feeds. Unknown keys, wrong types and
missing required fields are errors naming the key and the file.
YAML is read with `yaml.safe_load` (no object construction from tags).
"""

import dataclasses
import os
import typing

import yaml


class RecipeError(ValueError):
    """A recipe or an override is invalid."""


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


@dataclasses.dataclass
class DataConfig:
    train: str = "synthetic"
    val: str = "synthetic"
    image_size: typing.List[int] = dataclasses.field(default_factory=lambda: [128, 128])
    max_boxes: int = 100
    num_train_images: typing.Optional[int] = None
    num_val_images: typing.Optional[int] = None
    seed: int = 0
    cache: bool = True


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
    clipnorm: typing.Optional[float] = None
    eval_every_n_epochs: int = 1
    seed: int = 0


@dataclasses.dataclass
class Recipe:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self):
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
CHOICES = {
    ("train", "optimizer"): ("sgd", "adamw", "adam"),
    ("train", "schedule"): ("cosine", "step", "constant"),
    ("model", "head"): ("retinanet", "faster_rcnn", "rpn"),
}


def _check_type(value, annotation, where):
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return value
        annotation = [a for a in typing.get_args(annotation) if a is not type(None)][0]
        origin = typing.get_origin(annotation)
    if origin in (list, typing.List) or annotation is list:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, received {value!r}")
        return list(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise RecipeError(f"{where}: expected true/false, received {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RecipeError(f"{where}: expected an integer, received {value!r}")
    if annotation in (float, str, dict) and not isinstance(value, annotation):
        raise RecipeError(f"{where}: expected {annotation.__name__}, received {value!r}")
    return value


def recipe_from_dict(data, source="<dict>"):
    """Validates plain data (as read from YAML) into a `Recipe`."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping with sections {sorted(SECTIONS)}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise RecipeError(f"{source}: unknown section(s) {unknown}; allowed: {sorted(SECTIONS)}")
    sections = {}
    for name, cls in SECTIONS.items():
        values = data.get(name) or {}
        if not isinstance(values, dict):
            raise RecipeError(f"{source}: section '{name}' must be a mapping, received {values!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        for key, value in values.items():
            if key not in fields:
                raise RecipeError(
                    f"{source}: unknown key '{name}.{key}'; allowed keys in '{name}': {sorted(fields)}")
            values[key] = _check_type(value, hints[key], f"{source}: {name}.{key}")
            choices = CHOICES.get((name, key))
            if choices and values[key] not in choices:
                raise RecipeError(
                    f"{source}: {name}.{key} must be one of {list(choices)}, received {values[key]!r}")
        sections[name] = cls(**values)
    return Recipe(**sections)


def apply_override(data, assignment):
    """Applies 'section.key=value' (value parsed as YAML) to plain recipe data."""
    if "=" not in assignment:
        raise RecipeError(f"override {assignment!r} must look like section.key=value")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    if len(keys) < 2:
        raise RecipeError(f"override {assignment!r}: name a section and a key, e.g. train.batch_size=8")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {assignment!r}: {key} is not a section")
    node[keys[-1]] = yaml.safe_load(raw)
    return data


def recipes_dir():
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "recipes"), os.path.join(os.path.dirname(here), "recipes")):
        if os.path.isdir(candidate):
            return candidate
    return os.path.join(os.path.dirname(here), "recipes")


def resolve_recipe_path(name_or_path):
    if os.path.isfile(name_or_path):
        return name_or_path
    candidate = os.path.join(recipes_dir(), name_or_path + ("" if name_or_path.endswith(".yaml") else ".yaml"))
    if os.path.isfile(candidate):
        return candidate
    available = sorted(f[:-5] for f in os.listdir(recipes_dir()) if f.endswith(".yaml")) \
        if os.path.isdir(recipes_dir()) else []
    raise RecipeError(f"no recipe {name_or_path!r}: not a file, and not one of {available}")


def load_recipe(name_or_path, overrides=()):
    """Reads a recipe by name (in recipes/) or path, applies overrides, validates."""
    path = resolve_recipe_path(name_or_path)
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            raise RecipeError(f"{path}: not valid YAML: {error}") from error
    for assignment in overrides:
        data = apply_override(data, assignment)
    return recipe_from_dict(data, source=path)


def dump_recipe(recipe, path):
    with open(path, "w") as f:
        yaml.safe_dump(recipe.to_dict(), f, sort_keys=False)
