"""COCO-format detection datasets (a JSON annotation file + an image folder).

``load(annotations, image_dir)`` reads any COCO detection JSON (COCO itself,
or an export from a labelling tool) and yields the common element format
``{"image": uint8 [H, W, 3], "image_id": int64, "boxes": float32 [n, 4] xyxy
pixels, "labels": int32 [n], "ignore": bool [n]}``.

- Category ids are mapped to contiguous labels 0..K-1 in increasing id order;
  ``ClassNames.category_ids[label]`` maps back (for COCO results files).
- ``bbox`` [x, y, w, h] -> xyxy [x, y, x + w, y + h]; ``iscrowd`` (or
  ``ignore``) annotations become ignore regions (``"ignore": True``).
- Images without annotations are kept (negative images).
- Bad data never kills the run silently: a missing, empty, unreadable or
  truncated image file, a JPEG whose data libjpeg finds damaged (warnings that
  otherwise only reach stderr), a ``file_name`` outside the image folder (absolute
  or ``..``), an annotation with an unknown category or image id, a box
  with non-positive width/height or entirely outside its image is skipped
  with a warning naming it, and a summary line counts the skips; boxes
  partly outside their image are clipped (counted). When nothing usable is
  left, ``ValueError``. Images that pass the checks but still fail to decode
  inside tf.data are dropped by ``ignore_errors`` (TF logs a warning).

An image entry or annotation missing a required field (or with a non-integer
id) is skipped and counted like a malformed bbox, its index and field named.
Structural problems of the annotation file itself (missing file, invalid
JSON, a missing top-level list, duplicate ids) raise ``FileNotFoundError`` /
``ValueError`` naming the file and field.

Shared helpers (``ClassNames``, ``records_to_dataset``, ``safe_join``,
``check_image``) are used by the VOC loader too.
"""

import dataclasses
import json
import logging
import os
import typing

import numpy as np
import tensorflow as tf

from fpn_keras.data.jpeg_check import jpeg_damage

logger = logging.getLogger("fpn_keras.data")

_SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP")
_MAX_NAMED = 20  # per kind of problem, name at most this many files in the log


class ClassNames(list):
    """A list of class names (label i -> name i) that also carries
    ``category_ids`` (label i -> the dataset's original category id, or None
    when the dataset has no ids of its own)."""

    def __init__(self, names, category_ids=None):
        super().__init__(str(n) for n in names)
        if category_ids is not None:
            category_ids = [int(c) for c in category_ids]
            if len(category_ids) != len(self):
                raise ValueError(
                    f"{len(self)} class names but {len(category_ids)} category ids"
                )
        self.category_ids = category_ids


class SkipLog:
    """Counts skipped / repaired items per reason and logs the first few by name."""

    def __init__(self, source):
        self.source = source
        self.counts = {}

    def add(self, reason, what):
        kind = reason.split(" (")[0]  # count by kind, log the details
        count = self.counts.get(kind, 0) + 1
        self.counts[kind] = count
        if count <= _MAX_NAMED:
            logger.warning("%s: %s: %s", self.source, reason, what)
        elif count == _MAX_NAMED + 1:
            logger.warning("%s: %s: more files, not named (see the summary)", self.source, reason)

    def summary(self, kept_images, negatives):
        message = f"{self.source}: {kept_images} images kept ({negatives} without boxes)"
        if self.counts:
            details = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
            logger.warning("%s; skipped/changed: %s", message, details)
        else:
            logger.info("%s", message)


def safe_join(image_dir, file_name):
    """``image_dir/file_name`` or None when ``file_name`` is absolute or escapes
    ``image_dir`` (``..``): annotation files come from other people."""
    if not isinstance(file_name, str) or not file_name or "\x00" in file_name:
        return None
    if os.path.isabs(file_name) or file_name.startswith(("/", "\\")) or os.path.splitdrive(file_name)[0]:
        return None
    root = os.path.normpath(os.path.abspath(image_dir))
    path = os.path.normpath(os.path.join(root, file_name))
    if os.path.commonpath([root, path]) != root or path == root:
        return None
    return path


# Pixel modes the decoder (tf.io.decode_image, 3 channels, uint8) changes: counted, not silent.
_CONVERSIONS = {
    "L": "grayscale image converted to RGB", "1": "1-bit image converted to RGB",
    "P": "palette image converted to RGB", "LA": "grayscale image with alpha: alpha dropped",
    "PA": "palette image with alpha: alpha dropped", "RGBA": "RGBA image: alpha dropped",
    "CMYK": "CMYK JPEG converted to RGB", "I;16": "16-bit image scaled to 8 bits",
    "I;16B": "16-bit image scaled to 8 bits", "I;16L": "16-bit image scaled to 8 bits",
    "I": "32-bit integer image scaled to 8 bits", "F": "floating-point image scaled to 8 bits",
}


def inspect_image(path, mode="header"):
    """-> (None or the reason ``path`` is not a decodable image, (height, width) or None,
    what decoding it as 8-bit RGB changes (e.g. "16-bit image scaled to 8 bits") or None).

    ``mode``: "none" (exists, non-empty; size unknown), "header" (default: PIL
    reads the header, the format is one tf.io.decode_image supports, a
    JPEG/PNG file is not truncated: it ends with its EOI/IEND marker, and libjpeg
    decodes a JPEG's data without a warning: `jpeg_check.jpeg_damage`), "full"
    (also PIL decodes the whole image; slow).
    """
    if mode not in ("none", "header", "full"):
        raise ValueError(f"check_images must be 'none', 'header' or 'full', got {mode!r}")
    if not os.path.isfile(path):
        return "missing image file", None, None
    size = os.path.getsize(path)
    if size == 0:
        return "empty image file", None, None
    if mode == "none":
        return None, None, None
    from PIL import Image

    try:
        with Image.open(path) as image:
            fmt = image.format
            width, height = image.size
            conversion = _CONVERSIONS.get(image.mode)
            if mode == "full":
                image.load()
    except Exception as error:  # noqa: BLE001 - any PIL failure means unreadable
        return f"unreadable image ({type(error).__name__}: {error})", None, None
    if fmt not in _SUPPORTED_FORMATS:
        return f"unsupported image format {fmt}", None, None
    with open(path, "rb") as f:
        f.seek(max(size - 1024, 0))
        tail = f.read()
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)", None, None
    if fmt == "PNG" and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk)", None, None
    damage = jpeg_damage(path) if fmt == "JPEG" else None
    if damage:  # damaged in the middle: decodes to garbage or flat blocks, with a stderr warning only
        return f"damaged JPEG data (libjpeg: {damage})", None, None
    return None, (int(height), int(width)), conversion


def check_image(path, mode="header"):
    """None if ``path`` looks like a decodable image, else the reason (see ``inspect_image``)."""
    return inspect_image(path, mode)[0]


def _decode(path):
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def records_to_dataset(records, shuffle=False, seed=None):
    """Records (dicts with path, image_id, boxes [n, 4], labels [n], ignore [n])
    -> ``tf.data.Dataset`` of elements; images decoded in parallel
    (AUTOTUNE), deterministic order when ``seed`` is given; decode failures
    are dropped by ``ignore_errors(log_warning=True)``. ``shuffle`` shuffles
    the file list (cheap, before decoding) every epoch."""
    lengths = np.array([len(r["labels"]) for r in records], np.int64)
    boxes = np.concatenate(
        [np.asarray(r["boxes"], np.float32).reshape(-1, 4) for r in records] + [np.zeros((0, 4), np.float32)]
    )
    labels = np.concatenate([np.asarray(r["labels"], np.int32) for r in records] + [np.zeros(0, np.int32)])
    ignore = np.concatenate([np.asarray(r["ignore"], bool) for r in records] + [np.zeros(0, bool)])
    table = {
        "path": tf.constant([r["path"] for r in records], tf.string),
        "image_id": tf.constant([int(r["image_id"]) for r in records], tf.int64),
        "boxes": tf.RaggedTensor.from_row_lengths(boxes, lengths),
        "labels": tf.RaggedTensor.from_row_lengths(labels, lengths),
        "ignore": tf.RaggedTensor.from_row_lengths(ignore, lengths),
    }
    dataset = tf.data.Dataset.from_tensor_slices(table)
    if shuffle:
        dataset = dataset.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)

    def decode(row):
        image = _decode(row["path"])
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        limit = tf.stack([size[1], size[0], size[1], size[0]])
        return {
            "image": image,
            "image_id": row["image_id"],
            "boxes": tf.clip_by_value(tf.reshape(row["boxes"], [-1, 4]), 0.0, limit),
            "labels": row["labels"],
            "ignore": row["ignore"],
        }

    dataset = dataset.map(
        decode,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True if seed is not None else None,
    )
    return dataset.ignore_errors(log_warning=True)


def _require(obj, field, where, path):
    if not isinstance(obj, dict) or field not in obj:
        raise ValueError(f"{path}: {where} is missing the required field {field!r}")
    return obj[field]


def _int_id(value, field, where, path):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{path}: {where} field {field!r} must be an integer, got {value!r}")
    return int(value)


def read_annotations(annotations, image_dir, check_images="header"):
    """Parse and validate a COCO detection JSON -> (records, ClassNames, SkipLog).

    See the module docstring for what is checked; records are the input of
    ``records_to_dataset``.
    """
    annotations = os.fspath(annotations)
    if not os.path.isfile(annotations):
        raise FileNotFoundError(f"COCO annotation file not found: {annotations}")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"COCO image folder not found: {image_dir}")
    try:
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{annotations}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{annotations}: top level must be a JSON object, got {type(data).__name__}")
    images = _require(data, "images", "the file", annotations)
    anns = _require(data, "annotations", "the file", annotations)
    categories = _require(data, "categories", "the file", annotations)
    for name, value in (("images", images), ("annotations", anns), ("categories", categories)):
        if not isinstance(value, list):
            raise ValueError(f"{annotations}: field {name!r} must be a list")
    if not categories:
        raise ValueError(f"{annotations}: field 'categories' is empty")
    if not images:
        raise ValueError(f"{annotations}: field 'images' is empty (empty split)")

    cats = {}
    for i, cat in enumerate(categories):
        cat_id = _int_id(_require(cat, "id", f"categories[{i}]", annotations), "id", f"categories[{i}]", annotations)
        name = _require(cat, "name", f"categories[{i}]", annotations)
        if cat_id in cats:
            raise ValueError(f"{annotations}: duplicate category id {cat_id}")
        cats[cat_id] = str(name)
    category_ids = sorted(cats)
    label_of = {cat_id: label for label, cat_id in enumerate(category_ids)}
    class_names = ClassNames([cats[c] for c in category_ids], category_ids)

    skips = SkipLog(os.path.basename(annotations))
    infos = {}
    for i, image in enumerate(images):
        where = f"images[{i}]"
        try:
            image_id = _int_id(_require(image, "id", where, annotations), "id", where, annotations)
            file_name = _require(image, "file_name", where, annotations)
        except ValueError as error:  # the image cannot be named or loaded: skipped, counted
            skips.add("image entry with a missing or invalid field", str(error).split(": ", 1)[1])
            continue
        if image_id in infos:
            raise ValueError(f"{annotations}: duplicate image id {image_id}")
        infos[image_id] = {
            "file_name": file_name,
            "width": image.get("width"),
            "height": image.get("height"),
            "boxes": [], "labels": [], "ignore": [],
        }

    for i, ann in enumerate(anns):
        where = f"annotations[{i}]"
        try:
            image_id = _int_id(_require(ann, "image_id", where, annotations), "image_id", where, annotations)
            cat_id = _int_id(_require(ann, "category_id", where, annotations), "category_id", where, annotations)
            bbox = _require(ann, "bbox", where, annotations)
        except ValueError as error:  # like a malformed bbox: skipped, counted, named
            skips.add("annotation with a missing or invalid field", str(error).split(": ", 1)[1])
            continue
        ann_name = f"{where} (id {ann.get('id')}, image {image_id})"
        info = infos.get(image_id)
        if info is None:
            skips.add("annotation with unknown image id", ann_name)
            continue
        if cat_id not in label_of:
            skips.add("annotation with unknown category id", f"{ann_name}: category_id {cat_id}")
            continue
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            skips.add("annotation with malformed bbox", f"{ann_name}: bbox {bbox!r}")
            continue
        if not all(np.isfinite([x, y, w, h])):
            skips.add("box with NaN/Inf coordinates", f"{ann_name}: bbox {bbox!r}")
            continue
        if w <= 0 or h <= 0:
            skips.add("box with non-positive width/height", f"{ann_name}: bbox {bbox!r}")
            continue
        box = [x, y, x + w, y + h]
        width, height = info["width"], info["height"]
        if isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0:
            clipped = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
                       min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)]
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                skips.add("box outside its image", f"{ann_name}: bbox {bbox!r}")
                continue
            if clipped != box:
                skips.add("box clipped to its image", f"{ann_name}: bbox {bbox!r}")
                box = clipped
        info["boxes"].append(box)
        info["labels"].append(label_of[cat_id])
        info["ignore"].append(bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0)))

    records = []
    negatives = 0
    for image_id, info in infos.items():
        path = safe_join(image_dir, info["file_name"])
        if path is None:
            skips.add("file_name refused (absolute or outside the image folder)", repr(info["file_name"]))
            continue
        reason, size, conversion = inspect_image(path, check_images)
        if reason is not None:
            skips.add(reason, path)
            continue
        if conversion:
            skips.add(conversion, path)
        if size is None and all(isinstance(info[k], (int, float)) for k in ("height", "width")):
            size = (int(info["height"]), int(info["width"]))
        negatives += not info["labels"]
        records.append({
            "path": path,
            "image_id": image_id,
            "size": size,
            "boxes": np.asarray(info["boxes"], np.float32).reshape(-1, 4),
            "labels": np.asarray(info["labels"], np.int32),
            "ignore": np.asarray(info["ignore"], bool),
        })
    skips.summary(len(records), negatives)
    if not records:
        problems = ", ".join(f"{n} {r}" for r, n in sorted(skips.counts.items()))
        raise ValueError(
            f"{annotations}: no usable images in {image_dir} ({len(images)} listed; {problems})"
        )
    return records, class_names, skips


@dataclasses.dataclass
class DatasetInfo:
    """What a loader knows about a dataset without decoding its images.

    num_images: images that passed the checks (None: unknown).
    image_sizes: int [num_images, 2] (height, width) or None when unknown.
    max_boxes: the most non-ignored boxes in one image (None: unknown).
    description: the spec and split, or which part of it (a held-out fraction).
    """

    num_images: typing.Optional[int] = None
    image_sizes: typing.Optional[np.ndarray] = None
    max_boxes: typing.Optional[int] = None
    description: str = ""


def records_info(records, description):
    """-> the ``DatasetInfo`` of a list of records."""
    sizes = [r.get("size") for r in records]
    known = all(s is not None for s in sizes) and bool(sizes)
    return DatasetInfo(
        num_images=len(records),
        image_sizes=np.asarray(sizes, np.int64).reshape(-1, 2) if known else None,
        max_boxes=max((int(np.sum(~np.asarray(r["ignore"], bool))) for r in records), default=0),
        description=description,
    )


def holdout_indices(num_images, fraction, seed):
    """The sorted indices of the held-out ``fraction`` of ``num_images`` images:
    ``round(fraction * num_images)`` of them (at least 1, and at least 1 image
    left for training), chosen by a ``seed``-ed permutation (the same every run)."""
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"the held-out fraction must lie in (0, 1), got {fraction!r}")
    if num_images < 2:
        raise ValueError(f"cannot hold out images from a dataset of {num_images} image(s): "
                         "give a separate validation set")
    count = min(max(1, int(round(float(fraction) * num_images))), num_images - 1)
    order = np.random.default_rng(int(seed or 0)).permutation(num_images)
    return np.sort(order[:count])


def split_records(records, fraction, seed, part):
    """``part`` "train" (the rest) or "held_out" of ``records`` (see ``holdout_indices``)."""
    held = np.zeros(len(records), bool)
    held[holdout_indices(len(records), fraction, seed)] = True
    if part not in ("train", "held_out"):
        raise ValueError(f"part must be 'train' or 'held_out', got {part!r}")
    return [r for r, h in zip(records, held) if h == (part == "held_out")]


def limit_records(records, num_images, source):
    """The first ``num_images`` records (all when None), with a log line."""
    if num_images is None:
        return records
    if int(num_images) <= 0:
        raise ValueError(f"num_images must be positive, got {num_images!r}")
    if int(num_images) < len(records):
        logger.warning("%s: using the first %d of %d images (num_images)", source, int(num_images), len(records))
    return records[: int(num_images)]


def load(annotations, image_dir, split=None, shuffle=False, seed=None, check_images="header",
         num_images=None):
    """A COCO-JSON dataset -> (``tf.data.Dataset`` of elements, ``ClassNames``).

    ``split`` is accepted for API symmetry and ignored (the annotation file
    is the split). ``shuffle`` shuffles the file list every epoch before
    decoding (use it for training, with a small ``prepare`` shuffle buffer);
    ``seed`` makes order and decoding deterministic. ``check_images``: see
    ``check_image``. ``num_images`` keeps the first N usable images.
    """
    del split
    records, class_names, _ = read_annotations(annotations, image_dir, check_images)
    records = limit_records(records, num_images, os.fspath(annotations))
    return records_to_dataset(records, shuffle=shuffle, seed=seed), class_names


__all__ = ["ClassNames", "DatasetInfo", "check_image", "holdout_indices", "inspect_image", "limit_records", "load", "read_annotations", "records_info",
           "records_to_dataset", "safe_join", "split_records"]
