"""Datasets and tf.data input pipelines.

Every loader yields unbatched elements {"image": uint8 [H, W, 3], "image_id": int64,
"boxes": float32 [n, 4] xyxy pixels, "labels": int32 [n] (0..K-1),
"ignore": bool [n] (COCO iscrowd / VOC difficult)}; `pipeline.prepare`
turns them into the batches `FPNDetector.fit` takes, with the augmentations
of `transforms`.
"""

import logging

import tensorflow as tf

from fpn_keras.data import coco, pipeline, synthetic, tfds, transforms, voc
from fpn_keras.data.coco import ClassNames

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


def load(spec, split, num_images=None, **kwargs):
    """Loads a dataset by spec -> (tf.data.Dataset of elements, class_names).

    Specs:
      - "synthetic": built in; kwargs go to `synthetic.load`.
      - "tfds:NAME" (e.g. tfds:coco/2017, tfds:voc/2007): `tfds.load`;
        kwargs data_dir, download (default False), shuffle, seed, read_config.
      - "coco:ANNOTATIONS.json:IMAGE_DIR": `coco.load` (`split` ignored: the
        JSON is the split); kwargs shuffle, seed, check_images.
      - "voc:DIR": `voc.load` (ImageSets/Main/{split}.txt); kwargs
        class_names, shuffle, seed, check_images.

    `num_images` keeps the first N images (all by default; logged).
    `class_names` is a `ClassNames` list whose `category_ids` maps labels to
    the dataset's original category ids (COCO) or is None; pass it to
    `CocoEvaluator(category_ids=...)` so results files use the original ids.
    """
    kind, args = parse_spec(spec)
    if kind == "synthetic":
        if num_images is not None:
            kwargs["num_images"] = num_images
        dataset = synthetic.load(split, **kwargs)
        dataset = dataset.map(lambda e: dict(e, ignore=tf.zeros_like(e["labels"], tf.bool)))
        return dataset, ClassNames(synthetic.CLASS_NAMES)
    if kind == "tfds":
        dataset, names = tfds.load(args[0], split, **kwargs)
        return _limit(dataset, num_images, spec), names
    if kind == "coco":
        return coco.load(args[0], args[1], split, num_images=num_images, **kwargs)
    return voc.load(args[0], split, num_images=num_images, **kwargs)


__all__ = ["ClassNames", "coco", "load", "parse_spec", "pipeline", "synthetic", "tfds", "transforms", "voc"]
