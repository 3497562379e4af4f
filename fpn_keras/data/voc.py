"""Pascal VOC-format detection datasets (a VOCdevkit year folder).

Layout of ``DIR`` (e.g. ``VOCdevkit/VOC2007``)::

    DIR/ImageSets/Main/{split}.txt   one image id per line
    DIR/Annotations/{id}.xml         one <annotation> per image
    DIR/JPEGImages/{id}.jpg

Elements are the common format ``{"image", "image_id", "boxes", "labels",
"ignore"}``:

- labels index ``CLASS_NAMES`` (the 20 VOC classes, alphabetical as in TFDS)
  or the ``class_names`` given; without them, a folder whose objects are not all
  VOC classes (VOC-style XML exported by labelling tools) gets the sorted names
  found in its annotation files (``infer_class_names``);
- coordinates: VOC pixel coordinates are 1-based and inclusive (a box
  covering the first 10 pixel columns has xmin=1, xmax=10), so the xyxy box
  in this library's convention (0-based, exclusive max) is
  ``(xmin - 1, ymin - 1, xmax, ymax)``, as detectron2 does;
- ``<difficult>1</difficult>`` objects become ignore regions, as in the VOC
  protocol (neither positives nor false positives in evaluation);
- the image id is the numeric file stem with "_" removed (``000005`` -> 5,
  ``2008_000008`` -> 2008000008), else the line index in the split file.

A missing split file raises ``FileNotFoundError``, an empty split and an
unparsable / incomplete XML file ``ValueError`` naming the file. Missing or
corrupt images, a missing XML file, objects of unknown classes and boxes
with non-positive size are skipped with a warning naming them (counted in a
summary log line); boxes partly outside the image are clipped.
"""

import logging
import os
import re
import xml.etree.ElementTree as ET

import numpy as np

from fpn_keras.data.coco import (
    ClassNames,
    SkipLog,
    inspect_image,
    limit_records,
    records_to_dataset,
    safe_join,
)

logger = logging.getLogger("fpn_keras.data")

CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def _text(node, tag, xml_path, required=True):
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise ValueError(f"{xml_path}: missing <{tag}>")
        return None
    return child.text.strip()


def parse_xml(xml_path, class_index, skips):
    """One VOC annotation file -> dict(filename, width, height, boxes, labels, ignore)."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as error:
        raise ValueError(f"{xml_path}: invalid VOC annotation XML ({error})") from None
    if root.tag != "annotation":
        raise ValueError(f"{xml_path}: root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    width = height = None
    if size is not None:
        try:
            width = float(_text(size, "width", xml_path))
            height = float(_text(size, "height", xml_path))
        except ValueError as error:
            if "missing" in str(error):
                raise
            raise ValueError(f"{xml_path}: <size> must hold numbers") from None
    boxes, labels, ignore = [], [], []
    for i, obj in enumerate(root.findall("object")):
        name = _text(obj, "name", xml_path)
        where = f"{xml_path} object {i} ({name})"
        if name not in class_index:
            skips.add("object of unknown class", where)
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{xml_path}: object {i} is missing <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(_text(bndbox, t, xml_path)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as error:
            if "missing" in str(error):
                raise
            raise ValueError(f"{xml_path}: object {i} has a non-numeric <bndbox>") from None
        box = [xmin - 1.0, ymin - 1.0, xmax, ymax]
        if box[2] <= box[0] or box[3] <= box[1]:
            skips.add("box with non-positive width/height", f"{where}: {xmin, ymin, xmax, ymax}")
            continue
        if width and height:
            clipped = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
                       min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)]
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                skips.add("box outside its image", where)
                continue
            if clipped != box:
                skips.add("box clipped to its image", where)
                box = clipped
        difficult = _text(obj, "difficult", xml_path, required=False)
        boxes.append(box)
        labels.append(class_index[name])
        ignore.append(difficult not in (None, "0"))
    return {
        "filename": _text(root, "filename", xml_path, required=False),
        "size": (int(height), int(width)) if width and height else None,
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, np.int32),
        "ignore": np.asarray(ignore, bool),
    }


def _image_ids(names):
    ids = []
    for name in names:
        stem = name.replace("_", "")
        if not re.fullmatch(r"[0-9]{1,18}", stem):
            return list(range(len(names)))
        ids.append(int(stem))
    return ids if len(set(ids)) == len(ids) else list(range(len(names)))


def infer_class_names(root):
    """The class names of a VOC folder when none are given: the 20 VOC classes when
    every ``<object><name>`` in ``Annotations/*.xml`` is one of them, else the sorted
    names found there (a labelling tool's export). All splits of one folder get the
    same names, so train and val labels agree."""
    folder = os.path.join(root, "Annotations")
    found = set()
    for file_name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if not file_name.endswith(".xml"):
            continue
        try:
            tree = ET.parse(os.path.join(folder, file_name))
        except (ET.ParseError, OSError):
            continue  # read_split names the bad file if its split uses it
        found.update(n.text.strip() for n in tree.getroot().iter("name") if n.text and n.text.strip())
    if found <= set(CLASS_NAMES):
        return CLASS_NAMES
    names = tuple(sorted(found))
    logger.warning("voc:%s: class names from the annotation files (not the 20 VOC classes): %s",
                   root, ", ".join(names))
    return names


def read_split(root, split, class_names=None, check_images="header"):
    """Parse ``root`` for ``split`` -> (records, ClassNames, SkipLog).

    ``class_names``: label i -> name; None: ``infer_class_names(root)``."""
    root = os.fspath(root)
    names_tuple = tuple(infer_class_names(root) if class_names is None else class_names)
    class_index = {name: i for i, name in enumerate(names_tuple)}
    split_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        folder = os.path.dirname(split_file)
        present = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".txt") and "_" not in f) \
            if os.path.isdir(folder) else []
        hint = (f"; the folder has the splits {present}: choose one with --set data.train_split=NAME "
                "(or data.val_split)") if present else ""
        raise FileNotFoundError(f"VOC split file not found: {split_file}{hint}")
    with open(split_file, encoding="utf-8") as f:
        names = [line.split()[0] for line in f if line.strip()]
    if not names:
        raise ValueError(f"{split_file}: empty split (no image ids)")
    skips = SkipLog(f"voc:{root}:{split}")
    records = []
    negatives = 0
    for name, image_id in zip(names, _image_ids(names)):
        xml_path = safe_join(os.path.join(root, "Annotations"), f"{name}.xml")
        if xml_path is None:
            skips.add("image id refused (path outside the folder)", repr(name))
            continue
        if not os.path.isfile(xml_path):
            skips.add("missing annotation file", xml_path)
            continue
        try:
            ann = parse_xml(xml_path, class_index, skips)
        except ValueError as error:  # one malformed file costs its image, not the split
            skips.add("malformed annotation file (image skipped)", str(error))
            continue
        image_dir = os.path.join(root, "JPEGImages")
        path = safe_join(image_dir, f"{name}.jpg")
        if path is None or (not os.path.isfile(path) and ann["filename"]):
            path = safe_join(image_dir, ann["filename"]) or path
        if path is None:
            skips.add("image path refused (outside JPEGImages)", repr(name))
            continue
        reason, size, conversion = inspect_image(path, check_images)
        if reason is not None:
            skips.add(reason, path)
            continue
        if conversion:
            skips.add(conversion, path)
        negatives += not len(ann["labels"])
        records.append({"path": path, "image_id": image_id, "size": size or ann["size"],
                        "boxes": ann["boxes"], "labels": ann["labels"], "ignore": ann["ignore"]})
    skips.summary(len(records), negatives)
    if not records:
        problems = ", ".join(f"{n} {r}" for r, n in sorted(skips.counts.items()))
        raise ValueError(f"{split_file}: no usable images ({len(names)} listed; {problems})")
    return records, ClassNames(names_tuple), skips


def load(root, split="train", class_names=None, shuffle=False, seed=None, check_images="header",
         num_images=None):
    """A VOCdevkit-style folder -> (``tf.data.Dataset`` of elements, ``ClassNames``).

    ``split`` names ``ImageSets/Main/{split}.txt`` (train, val, trainval,
    test). ``shuffle``/``seed``/``check_images``/``num_images`` as in ``coco.load``.
    """
    records, names, _ = read_split(root, split, class_names, check_images)
    records = limit_records(records, num_images, f"voc:{root}:{split}")
    return records_to_dataset(records, shuffle=shuffle, seed=seed), names


__all__ = ["CLASS_NAMES", "load", "parse_xml", "read_split"]
