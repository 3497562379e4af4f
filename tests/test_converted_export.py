"""A converted torchvision detector through both exports: the SavedModel (resize inside,
torchvision's scale capped to the canvas, padding with the pixel mean) and float32 TFLite
give the detections that the Keras model gives on the same canvas."""

import os

import numpy as np
import pytest
import tensorflow as tf

from fpn_keras.data import transforms
from fpn_keras.postprocess import finalize_detections
from fpn_keras.preprocessing import fit_to_canvas
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
    """The Keras model on the export's canvas: torchvision's scale, capped to fit CANVAS."""
    scale = float(transforms.short_side_scale(*photo.shape[:2], *detector.short_side_resize))
    canvas, scale, size = fit_to_canvas(photo, CANVAS, detector.pad_value, scale=scale)
    raw = detector(np.asarray(canvas)[None], training=False)
    detections = finalize_detections(detector.head.detect(raw, CANVAS), "xyxy", CANVAS,
                                     np.asarray(scale)[None], np.asarray(size)[None])
    return canvas, float(scale), {k: np.asarray(v)[0] for k, v in detections.items()}


def _first(detections, n_key="num_detections", boxes="boxes", scores="scores", labels="labels"):
    n = int(np.asarray(detections[n_key]).reshape(-1)[0])
    return {"boxes": np.asarray(detections[boxes])[0, :n], "scores": np.asarray(detections[scores])[0, :n],
            "labels": np.asarray(detections[labels])[0, :n]}


def test_saved_model_and_tflite_equal_the_keras_model(converted, tmp_path):
    detector, photo = converted
    canvas, scale, expected = _keras_on_canvas(detector, photo)
    n = int(expected["num_detections"])
    assert n > 50, "the seeded weights give many confident detections"
    expected = {k: expected[k][:n] for k in ("boxes", "scores", "labels")}

    detector.export(str(tmp_path / "saved"), image_size=CANVAS)
    serving = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    out = _first(serving(images=tf.constant(photo[None])), boxes="detection_boxes",
                 scores="detection_scores", labels="detection_classes")
    assert np.mean(_matches(out, expected)) >= 0.99 and np.mean(_matches(expected, out)) >= 0.99

    from ai_edge_litert.interpreter import Interpreter

    detector.export(str(tmp_path / "model.tflite"), format="tflite", image_size=CANVAS)
    runner = Interpreter(model_path=str(tmp_path / "model.tflite"), num_threads=2).get_signature_runner(
        "serving_default")
    tflite = runner(images=np.asarray(canvas, np.float32)[None])
    # The TFLite graph takes the canvas and gives boxes on it: scale them back as the caller would.
    out = _first(tflite, boxes="detection_boxes", scores="detection_scores", labels="detection_classes")
    out["boxes"] = np.minimum(out["boxes"] / scale, [photo.shape[1], photo.shape[0]] * 2)
    assert np.mean(_matches(out, expected, iou=0.98, score_atol=1e-3)) >= 0.98
