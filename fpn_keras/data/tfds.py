"""TensorFlow Datasets object-detection datasets (``tfds:coco/2017``, ``tfds:voc/2007``, ...).

Any TFDS dataset with ``image`` and ``objects/{bbox, label}`` works: TFDS
boxes are normalised ``yxyx`` (``tfds.features.BBoxFeature``), converted here
to absolute ``xyxy`` pixels. ``objects/is_crowd`` (coco) and
``objects/is_difficult`` (voc) become ``"ignore"``. Class names come from
``info.features["objects"]["label"].names``; for COCO (80 classes) the
original COCO category ids are attached (``ClassNames.category_ids``) so
results files use them.

Nothing is downloaded unless ``download=True``: a dataset that is not
prepared in ``data_dir`` raises ``DatasetNotPreparedError`` with the
commands to prepare it.

``tensorflow_datasets`` is the optional ``tfds`` extra: it is imported by
``load`` only, and its absence raises ImportError naming
``pip install "fpn_keras[tfds]"``.
"""

import os

import tensorflow as tf

from fpn_keras.data.coco import ClassNames

# COCO 2014/2017 detection category ids, in the order of TFDS's 80 labels.
COCO_CATEGORY_IDS = tuple(
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
)

_SPLIT_ALIASES = {"val": "validation"}


class DatasetNotPreparedError(FileNotFoundError):
    """The TFDS dataset is not in ``data_dir`` and downloading was not allowed."""


def _default_data_dir():
    return os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")


def _not_prepared_message(name, data_dir, error, builder=None):
    where = data_dir or f"{_default_data_dir()} (default; set data_dir= or $TFDS_DATA_DIR)"
    dir_arg = f" --data_dir {data_dir}" if data_dir else ""
    lines = [
        f"TFDS dataset {name!r} is not prepared in data_dir={where}; download=False, so nothing "
        "was downloaded.",
        f"TFDS says: {error}",
        "To prepare it (needs network access and disk space; COCO 2017 is ~25 GB):",
        f"  tfds build {name}{dir_arg}",
        f"  or in Python: tensorflow_datasets.builder({name!r}, data_dir={data_dir!r}).download_and_prepare()",
        f"  or call fpn_keras.data.load('tfds:{name}', split, download=True).",
        "Offline: copy a prepared <data_dir>/<name>/<config>/<version>/ folder from a machine that "
        "has it and pass its root as data_dir.",
    ]
    manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) if builder is not None else None
    if manual:
        lines += ["Manual download instructions from TFDS:", str(manual).strip()]
    return "\n".join(lines)


def _import_tensorflow_datasets(name):
    try:
        import tensorflow_datasets
    except ImportError as error:
        raise ImportError(
            f"the data spec 'tfds:{name}' needs TensorFlow Datasets, which is not installed: "
            'pip install "fpn_keras[tfds]"'
        ) from error
    return tensorflow_datasets


def _image_id(example, features):
    if "image/id" in features:
        return tf.cast(example["image/id"], tf.int64)
    if "image/filename" in features:
        stem = tf.strings.regex_replace(example["image/filename"], r"^.*[/\\]", "")
        stem = tf.strings.regex_replace(stem, r"\.[^.]*$", "")
        digits = tf.strings.regex_replace(stem, "_", "")
        numeric = tf.logical_and(
            tf.strings.regex_full_match(digits, r"[0-9]{1,18}"), tf.strings.length(digits) > 0
        )
        return tf.cond(
            numeric,
            lambda: tf.strings.to_number(digits, tf.int64),
            lambda: tf.strings.to_hash_bucket_fast(stem, 2**62),
        )
    return None


def convert_example(example, features):
    """One TFDS example -> an element ``{"image", "image_id", "boxes", "labels", "ignore"}``.

    ``features`` is ``info.features``. Without an id feature the image id is
    -1 (``load`` replaces it with the running index).
    """
    image = example["image"]
    channels = features["image"].shape[-1]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]
    image = tf.cast(image, tf.uint8)
    objects = example["objects"]
    bbox = tf.reshape(tf.cast(objects["bbox"], tf.float32), [-1, 4])
    labels = tf.reshape(tf.cast(objects["label"], tf.int32), [-1])
    object_features = features["objects"]
    flag = None
    for key in ("is_crowd", "is_difficult"):
        if key in object_features:
            flag = tf.reshape(tf.cast(objects[key], tf.bool), [-1])
            break
    # Real TFDS data has one row per object in every field; take the common
    # length anyway (tfds.testing.mock_data draws each field's length at random).
    n = tf.minimum(tf.shape(bbox)[0], tf.shape(labels)[0])
    if flag is not None:
        n = tf.minimum(n, tf.shape(flag)[0])
    else:
        flag = tf.zeros_like(labels, tf.bool)
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    y_min, x_min, y_max, x_max = tf.unstack(tf.clip_by_value(bbox[:n], 0.0, 1.0), num=4, axis=-1)
    boxes = tf.stack(
        [x_min * size[1], y_min * size[0], x_max * size[1], y_max * size[0]], axis=-1
    )
    image_id = _image_id(example, features)
    return {
        "image": image,
        "image_id": tf.constant(-1, tf.int64) if image_id is None else image_id,
        "boxes": boxes,
        "labels": labels[:n],
        "ignore": flag[:n],
    }


def load(name, split="train", data_dir=None, download=False, shuffle=False, seed=None,
         read_config=None):
    """``tfds.load(name, split=..., data_dir=..., download=...)`` -> (dataset of
    elements, ``ClassNames``).

    ``split`` "val" means TFDS's "validation". ``shuffle`` shuffles the
    files (``shuffle_files``); with ``seed`` the order is deterministic.
    """
    tfds_lib = _import_tensorflow_datasets(name)
    split = _SPLIT_ALIASES.get(split, split)
    if read_config is None and seed is not None:
        read_config = tfds_lib.ReadConfig(shuffle_seed=seed)
    try:
        dataset, info = tfds_lib.load(
            name, split=split, data_dir=data_dir, download=download, with_info=True,
            shuffle_files=bool(shuffle), read_config=read_config,
        )
    except AssertionError as error:  # tfds: "could not find data in ..."
        builder = None
        try:
            builder = tfds_lib.builder(name, data_dir=data_dir)
        except Exception:  # noqa: BLE001 - only used for the manual-download text
            pass
        raise DatasetNotPreparedError(_not_prepared_message(name, data_dir, error, builder)) from None
    except tfds_lib.core.registered.DatasetNotFoundError as error:
        raise ValueError(f"unknown TFDS dataset {name!r}: {str(error).splitlines()[0]}") from None
    features = info.features
    if "objects" not in features or "image" not in features:
        raise ValueError(f"TFDS dataset {name!r} has no 'image' + 'objects' features")
    for key in ("bbox", "label"):
        if key not in features["objects"]:
            raise ValueError(f"TFDS dataset {name!r} has no 'objects/{key}' feature")
    names = list(features["objects"]["label"].names)
    category_ids = None
    if name.split("/")[0] == "coco" and len(names) == len(COCO_CATEGORY_IDS):
        category_ids = list(COCO_CATEGORY_IDS)
    deterministic = True if seed is not None else None
    dataset = dataset.map(
        lambda example: convert_example(example, features),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic,
    )
    if _image_id_missing(features):
        dataset = dataset.enumerate().map(lambda i, e: dict(e, image_id=tf.cast(i, tf.int64)))
    return dataset, ClassNames(names, category_ids)


def _image_id_missing(features):
    return "image/id" not in features and "image/filename" not in features


__all__ = ["COCO_CATEGORY_IDS", "DatasetNotPreparedError", "convert_example", "load"]
