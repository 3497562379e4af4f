"""The training and validation batches a recipe names, with the settings the data decides.

`build_datasets(recipe)` loads `data.train` and `data.val` (`"holdout"`: a seeded
`data.holdout_fraction` of the training images, which training then does not see),
resolves the data-dependent settings and returns them with where each came from:

- `image_size: auto`: the median long side of the training images, rounded to a
  multiple of 32, at most `data.max_image_size` (square canvas; images keep their
  aspect ratio and are padded bottom/right);
- `max_boxes: auto`: the most boxes in one training image (COCO/VOC folders);
- `cache: null` (auto): decoded images kept in memory when they need under 2 GiB;
- `num_train_images` / `num_val_images` apply to the synthetic generator only.

The number of training images (after the loaders' checks) is what the schedule's
steps per epoch come from; it is known for every built-in loader but a TFDS split of
unknown size.
"""

import dataclasses
import typing

import numpy as np
import tensorflow as tf

from fpn_keras import config as config_lib
from fpn_keras.data import coco, load, load_holdout, pipeline

CACHE_LIMIT_BYTES = 2 * 1024**3
FALLBACK_MAX_BOXES = 100


@dataclasses.dataclass
class TrainingData:
    """Batches for `fit` and evaluation, and what was decided about them.

    train / val: batched datasets (`pipeline.prepare`); train is finite (one pass: epoch 0).
    train_from(start_epoch=0, start_batch=0, num_epochs=None): the training batches from
    batch `start_batch` of epoch `start_epoch` on (what `fit` and a resumed run train
    on); its datasets share one decoded (cached) source.
    train_info / val_info: `DatasetInfo` of the images (after the checks).
    image_size: (height, width) of the canvas; max_boxes: boxes per image after padding.
    settings: setting name -> (value, where it came from), for the training log.
    """

    train: tf.data.Dataset
    val: tf.data.Dataset
    class_names: list
    train_info: coco.DatasetInfo
    val_info: coco.DatasetInfo
    image_size: typing.Tuple[int, int]
    max_boxes: int
    settings: dict
    train_from: typing.Callable = None


def auto_image_size(image_sizes, max_image_size):
    """Square canvas side from the images' sizes ([n, 2] height, width): the median long
    side rounded to a multiple of 32 (at least 64), at most `max_image_size` rounded down
    to a multiple of 32 -> (side, side)."""
    median = float(np.median(np.max(np.asarray(image_sizes), axis=1)))
    side = max(64, int(round(median / 32.0)) * 32)
    side = min(side, max(32, int(max_image_size) // 32 * 32))
    return side, side, median


def _origin(recipe, key):
    return recipe.origins.get(key, "default")


def _load_all(cfg, specs, split, num_images, holdout, image_size):
    """Loads and concatenates `specs` -> (class_names, (elements, DatasetInfo)), or with
    `holdout` -> (class_names, (train elements, info), (held-out elements, info)), each
    spec read once."""
    parts, class_names = [], None
    for spec in specs:
        extra = dict(cfg.load_args)
        if spec == "synthetic":
            extra.setdefault("image_size", image_size)
        limits = num_images if spec == "synthetic" else (None, None)
        if holdout is None:
            dataset, names, info = load(spec, split, num_images=limits[0], with_info=True, seed=cfg.seed, **extra)
            loaded = [(dataset, info)]
        else:
            names, *loaded = load_holdout(spec, split, holdout, *limits, seed=cfg.seed, **extra)
        if class_names is not None and list(names) != list(class_names):
            raise ValueError(f"data.train: {spec} has classes {list(names)[:5]}..., which differ "
                             f"from {specs[0]}'s {list(class_names)[:5]}...")
        class_names = names if class_names is None else class_names
        parts.append(loaded)
    return (class_names, *(_concatenate([p[k] for p in parts]) for k in range(len(parts[0]))))


def _concatenate(loaded):
    """[(elements, DatasetInfo), ...] -> (concatenated elements, combined DatasetInfo)."""
    elements = loaded[0][0]
    for more, _ in loaded[1:]:
        elements = elements.concatenate(more)
    infos = [info for _, info in loaded]
    if len(infos) == 1:
        return elements, infos[0]
    known = all(i.num_images is not None for i in infos)
    sizes = [i.image_sizes for i in infos]
    boxes = [i.max_boxes for i in infos]
    return elements, coco.DatasetInfo(
        num_images=sum(i.num_images for i in infos) if known else None,
        image_sizes=np.concatenate(sizes) if all(s is not None for s in sizes) else None,
        max_boxes=max(boxes) if all(b is not None for b in boxes) else None,
        description=" + ".join(i.description for i in infos))


def _resolve_image_size(recipe, info, settings):
    cfg = recipe.data
    if cfg.image_size != config_lib.AUTO:
        size = tuple(int(s) for s in cfg.image_size)
        settings["image_size"] = (f"{size[0]}x{size[1]}", _origin(recipe, "data.image_size"))
        return size
    if info.image_sizes is None or not len(info.image_sizes):
        side = max(32, cfg.max_image_size // 32 * 32)
        settings["image_size"] = (f"{side}x{side}", "auto: the image sizes are unknown, so "
                                  f"data.max_image_size={cfg.max_image_size}")
        return side, side
    height, width, median = auto_image_size(info.image_sizes, cfg.max_image_size)
    settings["image_size"] = (f"{height}x{width}", f"auto: median long side of the training images "
                              f"{median:.0f} px, multiple of 32, at most data.max_image_size={cfg.max_image_size}")
    return height, width


def _resolve_max_boxes(recipe, info, settings):
    cfg = recipe.data
    if cfg.max_boxes != config_lib.AUTO:
        settings["max_boxes"] = (cfg.max_boxes, _origin(recipe, "data.max_boxes"))
        return int(cfg.max_boxes)
    if info.max_boxes is None:
        settings["max_boxes"] = (FALLBACK_MAX_BOXES, "auto: the loader cannot count boxes per image, so "
                                 f"{FALLBACK_MAX_BOXES}")
        return FALLBACK_MAX_BOXES
    value = max(1, int(info.max_boxes))
    settings["max_boxes"] = (value, "auto: the most boxes in one training image")
    return value


def _resolve_cache(recipe, specs, infos, settings):
    cfg = recipe.data
    if cfg.cache is not None:
        settings["cache"] = ("on" if cfg.cache else "off", _origin(recipe, "data.cache"))
        return bool(cfg.cache)
    if all(spec == "synthetic" for spec in specs):
        settings["cache"] = ("on", "auto: synthetic data")
        return True
    if any(info.image_sizes is None for info in infos):
        settings["cache"] = ("off", "auto: the decoded size is unknown")
        return False
    size = sum(int(np.sum(np.prod(info.image_sizes, axis=1))) * 3 for info in infos)
    cache = size < CACHE_LIMIT_BYTES
    settings["cache"] = ("on" if cache else "off",
                         f"auto: {size / 2**20:.0f} MiB decoded, {'under' if cache else 'over'} "
                         f"{CACHE_LIMIT_BYTES / 2**30:.0f} GiB")
    return cache


def build_datasets(recipe):
    """-> `TrainingData` for `recipe` (see the module docstring)."""
    cfg = recipe.data
    specs = cfg.train if isinstance(cfg.train, list) else [cfg.train]
    generator_size = tuple(cfg.image_size) if cfg.image_size != config_lib.AUTO else (128, 128)
    holdout = cfg.holdout_fraction if cfg.val == config_lib.HOLDOUT else None
    limits = (cfg.num_train_images, cfg.num_val_images)
    if holdout is None:
        class_names, (train, train_info) = _load_all(cfg, specs, cfg.train_split, limits, None, generator_size)
        val_names, (val, val_info) = _load_all(cfg, [cfg.val], cfg.val_split, limits[1:], None, generator_size)
        if list(val_names) != list(class_names):
            raise ValueError(f"data.val: {cfg.val} has classes {list(val_names)[:8]}, which differ from "
                             f"data.train's {list(class_names)[:8]}: the labels would not match")
    else:
        class_names, (train, train_info), (val, val_info) = _load_all(cfg, specs, cfg.train_split, limits,
                                                                        holdout, generator_size)
    settings = {}
    image_size = _resolve_image_size(recipe, train_info, settings)
    max_boxes = _resolve_max_boxes(recipe, train_info, settings)
    cache = _resolve_cache(recipe, specs + ([] if holdout else [cfg.val]), [train_info, val_info], settings)
    batch = recipe.train.batch_size
    train_from = pipeline.prepare(train, batch, image_size, training=True, max_boxes=max_boxes,
                                  seed=recipe.train.seed, cache=cache, augment=cfg.augment, resize=cfg.resize,
                                  bounding_box_format=recipe.model.bounding_box_format, factory=True)
    # Evaluation batches are never truncated: an image with more boxes than the
    # training padding keeps all of them (max_boxes only bounds training targets).
    val_boxes = max(max_boxes, val_info.max_boxes or 0)
    val = pipeline.prepare(val, batch, image_size, training=False, max_boxes=val_boxes, cache=cache,
                           resize=cfg.resize, bounding_box_format=recipe.model.bounding_box_format)
    return TrainingData(train_from(num_epochs=1), val, class_names, train_info, val_info, image_size, max_boxes,
                        settings, train_from)


__all__ = ["TrainingData", "auto_image_size", "build_datasets"]
