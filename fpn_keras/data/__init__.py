"""Datasets and tf.data input pipelines.

Every loader yields unbatched elements {"image": uint8 [H, W, 3], "image_id": int64,
"boxes": float32 [n, 4] xyxy pixels, "labels": int32 [n] (0..K-1),
"ignore": bool [n] (COCO iscrowd / VOC difficult)}; `pipeline.prepare`
turns them into the batches `FPNDetector.fit` takes, with the augmentations
of `transforms`.
"""

import logging

import numpy as np
import tensorflow as tf

from fpn_keras.data import coco, pipeline, synthetic, tfds, transforms, voc
from fpn_keras.data.coco import ClassNames, DatasetInfo

SPECS = ("synthetic", "tfds:NAME", "coco:ANNOTATIONS.json:IMAGE_DIR", "voc:DIR")

logger = logging.getLogger("fpn_keras.data")


def parse_spec(spec):
    """"coco:A.json:IMG" -> ("coco", ["A.json", "IMG"]), "voc:DIR" -> ("voc", ["DIR"]),
    "tfds:coco/2017" -> ("tfds", ["coco/2017"]), "synthetic" -> ("synthetic", [])."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"dataset spec must be a non-empty string, got {spec!r}")
    if spec == "synthetic":
        return "synthetic", []
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"unknown dataset spec {spec!r}; supported: {list(SPECS)}")
    if kind == "coco":
        lower = rest.lower()
        cut = lower.find(".json:")
        if cut >= 0:
            annotations, image_dir = rest[: cut + 5], rest[cut + 6 :]
        else:
            annotations, _, image_dir = rest.partition(":")
        if not annotations or not image_dir:
            raise ValueError(
                f"dataset spec {spec!r}: expected coco:ANNOTATIONS.json:IMAGE_DIR"
            )
        return "coco", [annotations, image_dir]
    if kind in ("voc", "tfds"):
        return kind, [rest]
    raise ValueError(f"unknown dataset spec {spec!r}; supported: {list(SPECS)}")


def _limit(dataset, num_images, spec):
    if num_images is None:
        return dataset
    if int(num_images) <= 0:
        raise ValueError(f"num_images must be positive, got {num_images!r}")
    logger.warning("%s: using at most the first %d images (num_images)", spec, int(num_images))
    return dataset.take(int(num_images))


def _split_dataset(dataset, fraction, seed, part, spec):
    """The `part` of a dataset of known size (synthetic, TFDS): the same images as
    `coco.split_records` would pick from a list of that length."""
    num_images = int(dataset.cardinality())
    if num_images < 0:
        raise ValueError(f"{spec}: cannot hold out a fraction of a dataset of unknown size; "
                         "give a separate validation set")
    held = np.zeros(num_images, bool)
    held[coco.holdout_indices(num_images, fraction, seed)] = True
    mask = tf.constant(held if part == "held_out" else ~held)
    count = int(mask.numpy().sum())
    dataset = dataset.enumerate().filter(lambda i, e: mask[i]).map(lambda i, e: e)
    return dataset.apply(tf.data.experimental.assert_cardinality(count))


def _describe(spec, split, kind, holdout, part):
    text = spec if kind == "coco" else f"{spec} ({split})"
    if holdout is None:
        return text
    if part == "held_out":
        return f"the held-out {holdout:.0%} of {text}"
    return f"{text} without its held-out {holdout:.0%}"


def load(spec, split, num_images=None, holdout=None, part="train", with_info=False, **kwargs):
    """Loads a dataset by spec -> (tf.data.Dataset of elements, class_names), or
    (dataset, class_names, `DatasetInfo`) with `with_info=True`.

    Specs:
      - "synthetic": built in; kwargs go to `synthetic.load`.
      - "tfds:NAME" (e.g. tfds:coco/2017, tfds:voc/2007): `tfds.load`;
        kwargs data_dir, download (default False), shuffle, seed, read_config.
      - "coco:ANNOTATIONS.json:IMAGE_DIR": `coco.load` (`split` ignored: the
        JSON is the split); kwargs shuffle, seed, check_images.
      - "voc:DIR": `voc.load` (ImageSets/Main/{split}.txt); kwargs
        class_names, shuffle, seed, check_images.

    `holdout` (a fraction in (0, 1)) splits the images in two, the same way every
    run (seeded by `seed`): `part="held_out"` gives the held-out fraction (for
    validation), `part="train"` the rest. `num_images` then keeps the first N
    images (all by default; logged).
    `class_names` is a `ClassNames` list whose `category_ids` maps labels to
    the dataset's original category ids (COCO) or is None; pass it to
    `CocoEvaluator(category_ids=...)` so results files use the original ids.
    `DatasetInfo` gives the number of images that passed the checks (known for
    every spec but a TFDS split of unknown size), their sizes and the most boxes in
    one image (COCO and VOC folders).
    """
    kind, args = parse_spec(spec)
    description = _describe(spec, split, kind, holdout, part)
    info = coco.DatasetInfo(description=description)
    if kind in ("coco", "voc"):
        check = kwargs.pop("check_images", "header")
        shuffle, seed = kwargs.pop("shuffle", False), kwargs.get("seed")
        if kind == "coco":
            records, class_names, _ = coco.read_annotations(args[0], args[1], check)
        else:
            records, class_names, _ = voc.read_split(args[0], split, kwargs.pop("class_names", None), check)
        kwargs.pop("seed", None)
        if kwargs:
            raise TypeError(f"{spec}: unknown loader options {sorted(kwargs)}")
        if holdout is not None:
            records = coco.split_records(records, holdout, seed, part)
        records = coco.limit_records(records, num_images, description)
        dataset = coco.records_to_dataset(records, shuffle=shuffle, seed=seed)
        info = coco.records_info(records, description)
    else:
        if kind == "synthetic":
            if num_images is not None and holdout is None:
                kwargs["num_images"] = num_images
            dataset = synthetic.load(split, **kwargs)
            dataset = dataset.map(lambda e: dict(e, ignore=tf.zeros_like(e["labels"], tf.bool)))
            class_names = ClassNames(synthetic.CLASS_NAMES)
        else:
            dataset, class_names = tfds.load(args[0], split, **kwargs)
        if holdout is not None:
            dataset = _split_dataset(dataset, holdout, kwargs.get("seed"), part, spec)
        if kind == "tfds" or holdout is not None:
            dataset = _limit(dataset, num_images, spec)
        size = int(dataset.cardinality())
        info.num_images = size if size >= 0 else None
    return (dataset, class_names, info) if with_info else (dataset, class_names)


__all__ = ["ClassNames", "DatasetInfo", "coco", "load", "parse_spec", "pipeline", "synthetic", "tfds", "transforms", "voc"]
