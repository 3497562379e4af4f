import logging
import os

import numpy as np
import pytest
from PIL import Image

from fpn_keras import data as data_lib
from fpn_keras.data import voc


def _xml(filename, width, height, objects):
    objs = "".join(
        f"<object><name>{name}</name><difficult>{int(diff)}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>"
        "</object>"
        for name, b, diff in objects
    )
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>{objs}</annotation>")


def _voc(tmp_path, entries, split="val"):
    """entries: list of (id, (h, w) or None for no image, xml text or None)."""
    root = tmp_path / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(root / sub, exist_ok=True)
    for name, size, xml in entries:
        if size is not None:
            Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        if xml is not None:
            (root / "Annotations" / f"{name}.xml").write_text(xml)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n, _, _ in entries))
    return str(root)


def test_voc_round_trip_one_based_coordinates_and_difficult(tmp_path, caplog):
    root = _voc(tmp_path, [
        ("000005", (30, 40), _xml("000005.jpg", 40, 30, [
            ("dog", (1, 1, 10, 20), False),  # first 10 columns / 20 rows -> [0, 0, 10, 20]
            ("person", (11, 5, 40, 30), True),  # difficult -> ignore
            ("unicorn", (2, 2, 5, 5), False),  # unknown class: skipped
            ("cat", (30, 25, 45, 35), False),  # partly outside: clipped to [29, 24, 40, 30]
            ("car", (8, 8, 6, 9), False),  # xmax < xmin: skipped
        ])),
        ("2008_000008", (16, 16), _xml("2008_000008.jpg", 16, 16, [])),  # negative image
        ("000007", None, _xml("000007.jpg", 16, 16, [])),  # image missing
        ("000009", (16, 16), None),  # annotation missing
    ])
    with caplog.at_level(logging.WARNING, logger="fpn_keras.data"):
        ds, names = data_lib.load(f"voc:{root}", "val", class_names=voc.CLASS_NAMES)
    assert tuple(names) == voc.CLASS_NAMES and len(names) == 20 and names.category_ids is None
    els = {int(e["image_id"]): e for e in ds.as_numpy_iterator()}
    assert sorted(els) == [5, 2008000008]
    e = els[5]
    assert e["image"].shape == (30, 40, 3)
    np.testing.assert_array_equal(e["boxes"], [[0, 0, 10, 20], [10, 4, 40, 30], [29, 24, 40, 30]])
    np.testing.assert_array_equal(e["labels"], [names.index("dog"), names.index("person"), names.index("cat")])
    np.testing.assert_array_equal(e["labels"], [11, 14, 7])
    np.testing.assert_array_equal(e["ignore"], [False, True, False])
    assert els[2008000008]["boxes"].shape == (0, 4)
    log = caplog.text
    assert "unicorn" in log and "object of unknown class" in log
    assert "000007.jpg" in log and "missing image file" in log
    assert "000009.xml" in log and "missing annotation file" in log
    assert "non-positive width/height" in log and "box clipped" in log
    assert "2 images kept (1 without boxes)" in log


def test_voc_custom_class_names(tmp_path):
    root = _voc(tmp_path, [("img_a", (20, 20), _xml("img_a.jpg", 20, 20, [("widget", (3, 4, 5, 6), False)]))],
                split="train")
    ds, names = voc.load(root, "train", class_names=["gadget", "widget"])
    (e,) = list(ds.as_numpy_iterator())
    assert list(names) == ["gadget", "widget"]
    assert e["image_id"] == 0  # non-numeric ids -> line index
    np.testing.assert_array_equal(e["boxes"], [[2, 3, 5, 6]])
    np.testing.assert_array_equal(e["labels"], [1])


def test_voc_errors(tmp_path):
    root = _voc(tmp_path, [("000001", (8, 8), "<annotation><object>")])
    # The only file is malformed: no usable image left, and the count says why.
    with pytest.raises(ValueError, match="no usable images.*1 malformed annotation file"):
        voc.load(root, "val")
    (tmp_path / "VOC2007" / "Annotations" / "000001.xml").write_text(
        "<annotation><object><name>dog</name></object></annotation>")
    with pytest.raises(ValueError, match="no usable images.*1 malformed annotation file"):
        voc.load(root, "val")
    with pytest.raises(FileNotFoundError, match="test.txt"):
        voc.load(root, "test")
    (tmp_path / "VOC2007" / "ImageSets" / "Main" / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty.txt: empty split"):
        voc.load(root, "empty")
    bad = _voc(tmp_path / "b", [("000002", None, _xml("x.jpg", 8, 8, []))])
    with pytest.raises(ValueError, match="no usable images.*1 missing image file"):
        voc.load(bad, "val")


def test_voc_class_names_are_inferred_when_not_all_voc_classes(tmp_path, caplog):
    root = _voc(tmp_path, [
        ("000001", (16, 16), _xml("000001.jpg", 16, 16, [("widget", (1, 1, 5, 5), False)])),
        ("000002", (16, 16), _xml("000002.jpg", 16, 16, [("dog", (1, 1, 5, 5), False),
                                                         ("gadget", (6, 6, 9, 9), False)])),
    ])
    with caplog.at_level(logging.WARNING, logger="fpn_keras.data"):
        ds, names = data_lib.load(f"voc:{root}", "val")
    assert tuple(names) == ("dog", "gadget", "widget")  # sorted names found in Annotations/
    assert "class names from the annotation files" in caplog.text
    labels = {int(e["image_id"]): e["labels"].tolist() for e in ds.as_numpy_iterator()}
    assert labels == {1: [2], 2: [0, 1]}
    # only VOC classes in the files: the 20 VOC classes, in their usual order
    assert voc.infer_class_names(_voc(tmp_path / "b", [
        ("000001", (16, 16), _xml("000001.jpg", 16, 16, [("dog", (1, 1, 5, 5), False)]))])) == voc.CLASS_NAMES


def test_voc_missing_split_lists_the_splits_there(tmp_path):
    root = _voc(tmp_path, [("000001", (16, 16), _xml("000001.jpg", 16, 16, []))])
    with pytest.raises(FileNotFoundError, match=r"train.txt; the folder has the splits \['val'\]"):
        voc.load(root, "train")


def test_one_malformed_xml_costs_its_image_not_the_split(tmp_path, caplog):
    root = _voc(tmp_path, [("000001", (20, 20), _xml("000001.jpg", 20, 20, [("dog", (3, 4, 9, 9), False)])),
                           ("000002", (20, 20), "<annotation><object>"),
                           ("000003", (20, 20), "<annotation><object><name>dog</name></object></annotation>")])
    with caplog.at_level("WARNING"):
        ds, _ = voc.load(root, "val")
    assert [int(e["image_id"]) for e in ds.as_numpy_iterator()] == [1]
    assert "1 images kept (0 without boxes); skipped/changed: 2 malformed annotation file" in caplog.text
    assert "000002.xml" in caplog.text and "invalid VOC annotation XML" in caplog.text
    assert "000003.xml" in caplog.text and "<bndbox>" in caplog.text

