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


def _reader(spec, split, generator_images, kwargs):
    """Reads `spec` once (for COCO/VOC: parses the annotations and checks every image
    header) -> (class_names, make), where make(holdout, part, num_images) -> (dataset,
    DatasetInfo) builds one part of it."""
    kind, args = parse_spec(spec)
    if kind in ("coco", "voc"):
        check = kwargs.pop("check_images", "header")
        shuffle, seed = kwargs.pop("shuffle", False), kwargs.pop("seed", None)
        if kind == "coco":
            records, class_names, _ = coco.read_annotations(args[0], args[1], check)
        else:
            records, class_names, _ = voc.read_split(args[0], split, kwargs.pop("class_names", None), check)
        if kwargs:
            raise TypeError(f"{spec}: unknown loader options {sorted(kwargs)}")

        def make(holdout, part, num_images):
            description = _describe(spec, split, kind, holdout, part)
            chosen = records if holdout is None else coco.split_records(records, holdout, seed, part)
            chosen = coco.limit_records(chosen, num_images, description)
            return (coco.records_to_dataset(chosen, shuffle=shuffle, seed=seed),
                    coco.records_info(chosen, description))

        return class_names, make
    seed = kwargs.get("seed")
    if kind == "synthetic":
        if generator_images is not None:
            kwargs["num_images"] = generator_images
        elements = synthetic.load(split, **kwargs)
        elements = elements.map(lambda e: dict(e, ignore=tf.zeros_like(e["labels"], tf.bool)))
        class_names = ClassNames(synthetic.CLASS_NAMES)
    else:
        elements, class_names = tfds.load(args[0], split, **kwargs)

    def make(holdout, part, num_images):
        dataset = elements if holdout is None else _split_dataset(elements, holdout, seed, part, spec)
        if kind == "tfds" or holdout is not None:
            dataset = _limit(dataset, num_images, spec)
        size = int(dataset.cardinality())
        return dataset, coco.DatasetInfo(num_images=size if size >= 0 else None,
                                         description=_describe(spec, split, kind, holdout, part))

    return class_names, make


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
    class_names, make = _reader(spec, split, num_images if holdout is None else None, kwargs)
    dataset, info = make(holdout, part, num_images)
    return (dataset, class_names, info) if with_info else (dataset, class_names)


def load_holdout(spec, split, holdout, num_train_images=None, num_held_out_images=None, **kwargs):
    """Both parts of a held-out split, reading `spec` once (see `load`) ->
    (class_names, (train dataset, DatasetInfo), (held-out dataset, DatasetInfo))."""
    class_names, make = _reader(spec, split, None, kwargs)
    return class_names, make(holdout, "train", num_train_images), make(holdout, "held_out", num_held_out_images)


__all__ = ["ClassNames", "DatasetInfo", "coco", "load", "load_holdout", "parse_spec", "pipeline", "synthetic", "tfds", "transforms", "voc"]
