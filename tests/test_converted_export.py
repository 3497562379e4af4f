"""A converted torchvision detector through both exports: the SavedModel (resize inside,
torchvision's scale capped to the canvas, padding with the pixel mean) and float32 TFLite
give the detections that the Keras model gives on the same canvas."""

import os

import numpy as np
import pytest
import tensorflow as tf

from fpn_keras.data import transforms
from fpn_keras.postprocess import finalize_detections
from fpn_keras.preprocessing import short_side_batch
from test_torchvision_photos import _converted, _matches

CANVAS = (192, 256)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from test_torchvision_photos import DATA, read_image

    reference = dict(np.load(os.path.join(DATA, "torchvision_photos_reference.npz")))
    detector = _converted("retinanet_resnet50_fpn", reference, tmp_path_factory.mktemp("tv"))
    photo = read_image(os.path.join(DATA, "photos", "coffee.png"))  # 101x152
    return detector, photo


def _keras_on_canvas(detector, photo):
    """The Keras model on the export's canvas: torchvision's resize (it fits CANVAS here),
    padded to CANVAS with the pixel mean; boxes back by the scale (a number, as the export)."""
    batch, sizes, _, _ = short_side_batch([photo], *detector.short_side_resize, pad_value=detector.pad_value)
    assert np.all(sizes[0] <= CANVAS)
    pad = [[0, CANVAS[0] - batch.shape[1]], [0, CANVAS[1] - batch.shape[2]]]
    canvas = np.stack([np.pad(np.asarray(batch)[0, ..., c], pad, constant_values=v)
                       for c, v in enumerate(detector.pad_value)], axis=-1)
    scale = float(transforms.short_side_scale(*photo.shape[:2], *detector.short_side_resize))
    size = np.array(photo.shape[:2], np.float32)
    raw = detector(canvas[None], training=False)
    detections = finalize_detections(detector.head.detect(raw, CANVAS), "xyxy", CANVAS,
                                     np.asarray(scale)[None], np.asarray(size)[None])
    return canvas, float(scale), {k: np.asarray(v)[0] for k, v in detections.items()}


def _first(detections):
    n = int(np.asarray(detections["num_detections"]).reshape(-1)[0])
    return {k: np.asarray(detections[k])[0, :n] for k in ("boxes", "scores", "labels")}


def test_saved_model_and_tflite_equal_the_keras_model(converted, tmp_path):
    detector, photo = converted
    canvas, scale, expected = _keras_on_canvas(detector, photo)
    n = int(expected["num_detections"])
    assert n > 50, "the seeded weights give many confident detections"
    expected = {k: expected[k][:n] for k in ("boxes", "scores", "labels")}

    detector.export(str(tmp_path / "saved"), image_size=CANVAS)
    serving = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    out = _first(serving(images=tf.constant(photo[None])))
    assert np.mean(_matches(out, expected)) >= 0.99 and np.mean(_matches(expected, out)) >= 0.99

    from ai_edge_litert.interpreter import Interpreter

    detector.export(str(tmp_path / "model.tflite"), format="tflite", image_size=CANVAS)
    runner = Interpreter(model_path=str(tmp_path / "model.tflite"), num_threads=2).get_signature_runner(
        "serving_default")
    tflite = runner(images=np.asarray(canvas, np.float32)[None])
    # The TFLite graph takes the canvas and gives boxes on it: scale them back as the caller would.
    out = _first(tflite)
    out["boxes"] = np.minimum(out["boxes"] / scale, [photo.shape[1], photo.shape[0]] * 2)
    assert np.mean(_matches(out, expected, iou=0.98, score_atol=1e-3)) >= 0.98


def test_cli_evaluate_scores_a_converted_model_in_coco_ids(tmp_path):
    """`fpn-keras evaluate` on a COCO folder whose ground truth is torchvision's own confident
    detections (score > 0.3) on the two photographs: through evaluate's resize, the mapping back
    to each photo's pixels and the category ids, the converted model finds them (AP50 >= 0.9; a
    wrong box scale or class mapping scores far lower) and results.json holds COCO ids."""
    import json
    import shutil

    from fpn_keras import cli
    from fpn_keras.convert import from_torchvision
    from fpn_keras.convert.resnet_layout import random_resnet_state_dict
    from fpn_keras.convert.retinanet_layout import COCO_80_IDS, random_retinanet_state_dict
    from fpn_keras.models.detector import COCO_CLASS_NAMES
    from test_torchvision_photos import DATA, SEED
    from torchvision_helpers import seeded_checkpoint

    model = "retinanet_resnet50_fpn"
    reference = dict(np.load(os.path.join(DATA, "torchvision_photos_reference.npz")))
    state = random_retinanet_state_dict(random_resnet_state_dict(50, SEED, prefix="backbone.body."), SEED)
    checkpoint = seeded_checkpoint(tmp_path, state, {"weights_sha256": reference[f"{model}/weights_sha256"]},
                                   "retinanet.pth")
    sizes = (int(reference["min_size"]), int(reference["max_size"]))
    from_torchvision(model, weights=checkpoint, image_size=CANVAS, transform_sizes=sizes).save(
        str(tmp_path / "coco.keras"))
    images, annotations = [], []
    (tmp_path / "images").mkdir()
    for i, name in enumerate(reference["photos"]):
        shutil.copy(os.path.join(DATA, "photos", f"{name}.png"), tmp_path / "images" / f"{name}.png")
        height, width = _photo_size(name)
        images.append({"id": i + 1, "file_name": f"{name}.png", "height": int(height), "width": int(width)})
        boxes, scores, labels = (reference[f"{model}/{name}/{k}"] for k in ("boxes", "scores", "labels"))
        for box, label in zip(boxes[scores > 0.3], labels[scores > 0.3]):
            if int(label) in COCO_80_IDS:
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label),
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    assert len(annotations) >= 10
    categories = [{"id": c, "name": n} for c, n in zip(COCO_80_IDS, COCO_CLASS_NAMES)]
    with open(tmp_path / "ann.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    assert cli.main(["evaluate", "--model", str(tmp_path / "coco.keras"),
                     "--data", f"coco:{tmp_path / 'ann.json'}:{tmp_path / 'images'}", "--out", str(tmp_path)]) == 0
    metrics = json.load(open(tmp_path / "metrics.json"))["metrics"]
    print(f"converted RetinaNet through fpn-keras evaluate: AP50 {metrics['AP50']:.3f}, AP {metrics['AP']:.3f}")
    assert metrics["AP50"] >= 0.9, metrics
    results = json.load(open(tmp_path / "results.json"))
    assert results and {r["category_id"] for r in results} <= set(COCO_80_IDS)
    assert {r["category_id"] for r in results} & {a["category_id"] for a in annotations}


def _photo_size(name):
    from test_torchvision_photos import DATA, read_image

    return np.array(read_image(os.path.join(DATA, "photos", f"{name}.png")).shape[:2])
