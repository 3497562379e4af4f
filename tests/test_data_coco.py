import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fpn_keras import data as data_lib
from fpn_keras.data import coco, pipeline
from fpn_keras.evaluation.coco_eval import CocoEvaluator, evaluate_model


def _pattern(h, w, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, channels) if channels else (h, w), dtype=np.uint8)


def _write_jpeg(path, h, w):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(path, "JPEG", quality=95)


def _dataset(tmp_path, extra_images=(), extra_anns=()):
    """Tiny COCO folder: 40x30 RGB JPEG (id 101), 20x10 grayscale PNG in a
    subfolder (id 102), 8x6 RGBA PNG (103), 8x6 16-bit PNG (104), a negative
    JPEG (105)."""
    img = tmp_path / "img"
    _write_jpeg(str(img / "a.jpg"), 30, 40)
    os.makedirs(img / "sub")
    Image.fromarray(_pattern(10, 20, 0)).save(img / "sub" / "b.png")
    Image.fromarray(_pattern(6, 8, 4, seed=1), "RGBA").save(img / "c.png")
    Image.fromarray((np.arange(48).reshape(6, 8) * 1000).astype(np.uint16)).save(img / "d.png")
    _write_jpeg(str(img / "neg.jpg"), 16, 16)
    images = [
        {"id": 101, "file_name": "a.jpg", "width": 40, "height": 30},
        {"id": 102, "file_name": "sub/b.png", "width": 20, "height": 10},
        {"id": 103, "file_name": "c.png", "width": 8, "height": 6},
        {"id": 104, "file_name": "d.png", "width": 8, "height": 6},
        {"id": 105, "file_name": "neg.jpg", "width": 16, "height": 16},
        *extra_images,
    ]
    anns = [
        {"id": 1, "image_id": 101, "category_id": 7, "bbox": [2, 3, 10, 5], "iscrowd": 0},
        {"id": 2, "image_id": 101, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1},
        {"id": 3, "image_id": 101, "category_id": 42, "bbox": [30, 20, 20, 20], "iscrowd": 0},  # clipped
        {"id": 4, "image_id": 102, "category_id": 42, "bbox": [1.5, 2.25, 4, 6], "iscrowd": 0},
        {"id": 5, "image_id": 103, "category_id": 3, "bbox": [0, 0, 8, 6]},
        {"id": 6, "image_id": 104, "category_id": 7, "bbox": [1, 1, 2, 2]},
        *extra_anns,
    ]
    # category ids deliberately unsorted and non-contiguous
    cats = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 42, "name": "zebra"}]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path), str(img)


def _elements(ds):
    return {int(e["image_id"]): e for e in ds.as_numpy_iterator()}


def test_coco_round_trip_boxes_labels_mapping_and_ignore(tmp_path):
    ann, img = _dataset(tmp_path)
    ds, names = data_lib.load(f"coco:{ann}:{img}", "train")
    assert list(names) == ["cat", "dog", "zebra"]  # sorted by category id 3, 7, 42
    assert names.category_ids == [3, 7, 42]
    spec = ds.element_spec
    assert spec["image"].shape.as_list() == [None, None, 3] and spec["image"].dtype == tf.uint8
    assert spec["ignore"].dtype == tf.bool and spec["labels"].dtype == tf.int32
    els = _elements(ds)
    assert sorted(els) == [101, 102, 103, 104, 105]
    a = els[101]
    assert a["image"].shape == (30, 40, 3)
    # xywh -> xyxy; crowd kept as ignore; [30, 20, 20, 20] clipped to the 40x30 image
    np.testing.assert_array_equal(a["boxes"], [[2, 3, 12, 8], [0, 0, 40, 30], [30, 20, 40, 30]])
    np.testing.assert_array_equal(a["labels"], [1, 0, 2])
    np.testing.assert_array_equal(a["ignore"], [False, True, False])
    np.testing.assert_array_equal(els[102]["boxes"], [[1.5, 2.25, 5.5, 8.25]])
    np.testing.assert_array_equal(els[102]["labels"], [2])
    # grayscale -> 3 equal channels, exact
    gray = _pattern(10, 20, 0)
    np.testing.assert_array_equal(els[102]["image"], np.repeat(gray[..., None], 3, axis=-1))
    # RGBA -> RGB (alpha dropped), exact
    np.testing.assert_array_equal(els[103]["image"], _pattern(6, 8, 4, seed=1)[..., :3])
    # 16-bit PNG -> uint8 (high byte)
    expected16 = ((np.arange(48).reshape(6, 8) * 1000) >> 8).astype(np.uint8)
    np.testing.assert_array_equal(els[104]["image"][..., 0], expected16)
    # image without annotations kept as a negative
    assert els[105]["boxes"].shape == (0, 4) and els[105]["labels"].shape == (0,)


def test_coco_bad_data_skipped_with_named_warnings(tmp_path, caplog):
    img = tmp_path / "img"
    extra_images = [
        {"id": 201, "file_name": "missing.jpg"},
        {"id": 202, "file_name": "trunc.jpg"},
        {"id": 203, "file_name": "../../etc/passwd"},
        {"id": 204, "file_name": "/etc/passwd"},
        {"id": 205, "file_name": "garbage.jpg"},
    ]
    extra_anns = [
        {"id": 10, "image_id": 101, "category_id": 99, "bbox": [1, 1, 2, 2]},  # unknown category
        {"id": 11, "image_id": 101, "category_id": 7, "bbox": [5, 5, -3, 4]},  # negative width
        {"id": 12, "image_id": 101, "category_id": 7, "bbox": [100, 100, 5, 5]},  # outside
        {"id": 13, "image_id": 999, "category_id": 7, "bbox": [1, 1, 2, 2]},  # unknown image
        {"id": 14, "image_id": 201, "category_id": 7, "bbox": [1, 1, 2, 2]},
        {"id": 15, "image_id": 101, "category_id": 7},  # no bbox
        {"id": 16, "image_id": 101, "bbox": [1, 1, 2, 2]},  # no category_id
        {"id": 17, "image_id": "101", "category_id": 7, "bbox": [1, 1, 2, 2]},  # a string id
    ]
    ann, img = _dataset(tmp_path, extra_images, extra_anns)
    Image.fromarray(_pattern(64, 64)).save(os.path.join(img, "full.jpg"), quality=95)
    raw = open(os.path.join(img, "full.jpg"), "rb").read()
    open(os.path.join(img, "trunc.jpg"), "wb").write(raw[: len(raw) // 2])
    open(os.path.join(img, "garbage.jpg"), "wb").write(b"not an image at all" * 10)
    with caplog.at_level(logging.WARNING, logger="fpn_keras.data"):
        ds, _ = coco.load(ann, img)
    els = _elements(ds)
    assert sorted(els) == [101, 102, 103, 104, 105]
    np.testing.assert_array_equal(els[101]["labels"], [1, 0, 2])  # bad annotations dropped
    log = caplog.text
    assert "missing.jpg" in log and "missing image file" in log
    assert "trunc.jpg" in log and "truncated JPEG" in log
    assert "garbage.jpg" in log and "unreadable image" in log
    assert "'../../etc/passwd'" in log and "'/etc/passwd'" in log and "refused" in log
    assert "unknown category id" in log and "category_id 99" in log
    assert "non-positive width/height" in log and "box outside its image" in log
    assert "unknown image id" in log and "box clipped" in log
    assert "is missing the required field 'bbox'" in log and "is missing the required field 'category_id'" in log
    assert "field 'image_id' must be an integer, got '101'" in log
    assert "3 annotation with a missing or invalid field" in caplog.records[-1].getMessage()
    summary = [r.message for r in caplog.records if "images kept" in r.getMessage()]
    assert summary and "5 images kept (1 without boxes)" in caplog.records[-1].getMessage()
    assert "2 file_name refused" in caplog.records[-1].getMessage()


def test_coco_corrupt_image_passing_checks_is_dropped_in_tf_data(tmp_path):
    # a JPEG with a valid header and end marker but garbage in between: the header
    # check's libjpeg pass names it; with check_images="none" only the decoder
    # notices, and ignore_errors drops it instead of killing the run
    ann, img = _dataset(tmp_path, [{"id": 206, "file_name": "bad.jpg"}])
    _write_jpeg(os.path.join(img, "ok.jpg"), 64, 64)
    raw = bytearray(open(os.path.join(img, "ok.jpg"), "rb").read())
    sos = raw.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(raw[sos + 2 : sos + 4], "big")  # entropy-coded data
    body = len(raw) - 2 - start
    raw[start:-2] = (b"\xff\xd8" * body)[:body]  # a second SOI inside the scan
    open(os.path.join(img, "bad.jpg"), "wb").write(bytes(raw))
    assert coco.check_image(os.path.join(img, "bad.jpg"), "none") is None
    assert coco.check_image(os.path.join(img, "bad.jpg")).startswith("damaged JPEG data (libjpeg: undecodable")
    ds, _ = coco.load(ann, img, check_images="none")
    assert sorted(_elements(ds)) == [101, 102, 103, 104, 105]


def test_coco_everything_bad_and_structural_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        coco.load(str(tmp_path / "nope.json"), str(tmp_path))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        coco.load(str(bad), str(tmp_path))
    cats = [{"id": 1, "name": "a"}]
    for field in ("images", "annotations", "categories"):
        content = {"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [], "categories": cats}
        del content[field]
        bad.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=rf"bad.json.*'{field}'"):
            coco.load(str(bad), str(tmp_path))
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": cats}))
    with pytest.raises(ValueError, match=r"bad.json.*no usable images.*1 image entry with a missing or invalid field"):
        coco.load(str(bad), str(tmp_path))
    bad.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    with pytest.raises(ValueError, match="empty split"):
        coco.load(str(bad), str(tmp_path))
    bad.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "x.jpg"}, {"id": 2, "file_name": "../y.jpg"}],
        "annotations": [], "categories": cats}))
    with pytest.raises(ValueError, match="no usable images.*1 file_name refused, 1 missing image file"):
        coco.load(str(bad), str(tmp_path))
    with pytest.raises(ValueError, match="coco:ANNOTATIONS.json:IMAGE_DIR"):
        data_lib.load("coco:only.json", "train")


def test_safe_join():
    assert coco.safe_join("/data/img", "a/b.jpg") == "/data/img/a/b.jpg"
    assert coco.safe_join("/data/img", "a/../b.jpg") == "/data/img/b.jpg"
    for bad in ("../x.jpg", "a/../../x.jpg", "/etc/passwd", "", "..", "."):
        assert coco.safe_join("/data/img", bad) is None, bad


class _EchoModel:
    """Predicts exactly the ground truth of the batch being evaluated."""

    bounding_box_format = "xyxy"

    def __init__(self):
        self.targets = None

    def watch(self, dataset):
        for images, targets in dataset:
            self.targets = targets
            yield images, targets

    def predict_on_batch(self, images):
        labels = self.targets["labels"].numpy()
        return {"boxes": self.targets["boxes"].numpy(),
                "scores": np.where(labels >= 0, 0.9, 0.0).astype(np.float32),
                "labels": labels, "num_detections": (labels >= 0).sum(axis=1)}


def test_coco_results_json_uses_original_ids_and_pixels(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann, img = _dataset(tmp_path)
    ds, names = data_lib.load(f"coco:{ann}:{img}", "val")
    batches = pipeline.prepare(ds, batch_size=2, image_size=(128, 128))
    model = _EchoModel()
    evaluator = CocoEvaluator(class_names=names, category_ids=names.category_ids)
    metrics = evaluate_model(model, model.watch(batches), class_names=names, verbose=False,
                             evaluator=evaluator)
    assert metrics["AP"] == pytest.approx(1.0)
    results = evaluator.results_json()
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    # image 101 (scale 3.2): the crowd box is ground truth (ignore), not a detection;
    # boxes come back in original pixels with original category ids
    got = sorted((r["category_id"], [round(v, 3) for v in r["bbox"]]) for r in by_image[101])
    assert (7, [2.0, 3.0, 10.0, 5.0]) in got and (42, [30.0, 20.0, 10.0, 10.0]) in got
    assert by_image[102][0]["category_id"] == 42
    np.testing.assert_allclose(by_image[102][0]["bbox"], [1.5, 2.25, 4, 6], atol=1e-4)
    # pycocotools scores the results against the original annotation file
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    content = json.loads(open(ann).read())
    for a in content["annotations"]:  # fields pycocotools needs (our loader does not)
        a.setdefault("iscrowd", 0)
        a["area"] = a["bbox"][2] * a["bbox"][3]
    (tmp_path / "gt.json").write_text(json.dumps(content))
    gt = COCO(str(tmp_path / "gt.json"))
    ev = COCOeval(gt, gt.loadRes(str(path)), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    # every detection matches except the one clipped box ([30,20,20,20] in the file)
    assert ev.stats[1] > 0.6


def test_an_image_that_fails_to_decode_after_the_header_check_is_dropped_with_a_warning(tmp_path):
    """A PNG whose header and IEND chunk are intact but whose pixel data is corrupt passes
    the header check (it is counted in DatasetInfo) and fails in tf.data: the element is
    dropped and TensorFlow logs it at warning level, which the CLI shows
    (TF_CPP_MIN_LOG_LEVEL=1)."""
    import subprocess
    import sys

    img = tmp_path / "img"
    os.makedirs(img)
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 80 * i, np.uint8)).save(img / f"{i}.png")
    data = bytearray((img / "1.png").read_bytes())
    start = data.index(b"IDAT") + 8
    data[start:start + 20] = bytes(b ^ 0x55 for b in data[start:start + 20])
    (img / "1.png").write_bytes(bytes(data))
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.png", "width": 20, "height": 20}
                                          for i in range(3)],
                               "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    code = (f"from fpn_keras import data; ds, _, info = data.load('coco:{ann}:{img}', 'train', with_info=True); "
            "print('counted', info.num_images, 'decoded', sum(1 for _ in ds))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="1"))
    assert "counted 3 decoded 2" in result.stdout, result.stderr[-2000:]
    assert "Invalid PNG data" in result.stderr


def test_pixel_conversions_are_counted_and_named(tmp_path, caplog):
    """The decoder makes 8-bit RGB of everything: a grayscale, an RGBA and a 16-bit PNG
    are kept, each change counted in the summary and named in a warning."""
    ann, img = _dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fpn_keras.data"):
        ds, _ = coco.load(ann, img)
    assert sorted(_elements(ds)) == [101, 102, 103, 104, 105]
    log = caplog.text
    assert "grayscale image converted to RGB" in log and "b.png" in log
    assert "RGBA image: alpha dropped" in log and "c.png" in log
    assert "16-bit image scaled to 8 bits" in log and "d.png" in log
    summary = caplog.records[-1].getMessage()
    assert "5 images kept" in summary and "1 16-bit image scaled to 8 bits" in summary, summary
