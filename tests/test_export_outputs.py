"""The serving output contracts (fpn_keras/export/outputs.py), by hand."""

import numpy as np
import pytest
import tensorflow as tf

from fpn_keras.export.outputs import OD_API_NAMES, check_outputs, contract, od_api_outputs, pixel_outputs


def test_od_api_outputs_by_hand():
    # finalize_detections(..., "rel_yxyx") of one image: one detection (label 2), one padding row.
    detections = {"boxes": np.array([[[0.1, 0.2, 0.5, 0.6], [-1, -1, -1, -1]]], np.float32),
                  "scores": np.array([[0.9, 0.0]], np.float32), "labels": np.array([[2, -1]], np.int32),
                  "num_detections": np.array([1], np.int32)}
    out = {k: np.asarray(v) for k, v in od_api_outputs(detections).items()}
    assert tuple(out) == OD_API_NAMES and all(v.dtype == np.float32 for v in out.values())
    np.testing.assert_allclose(out["detection_boxes"], [[[0.1, 0.2, 0.5, 0.6], [0, 0, 0, 0]]])
    np.testing.assert_array_equal(out["detection_classes"], [[3.0, 1.0]])  # 1-based; padding 0 + 1
    np.testing.assert_allclose(out["detection_scores"], [[0.9, 0.0]], rtol=1e-6)
    np.testing.assert_array_equal(out["num_detections"], [1.0])
    with pytest.raises(ValueError, match=r"outputs must be one of \['pixels', 'od_api'\], received 'coco'"):
        check_outputs("coco")


def _saved_signature(tmp_path, input_name, outputs):
    """A SavedModel whose serving_default takes uint8 images under `input_name` and returns
    the constant `outputs` (what an older fpn_keras export or the OD API gives)."""
    module = tf.Module()
    module.f = tf.function(lambda images: {k: tf.constant(v) for k, v in outputs.items()},
                           input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=input_name)])
    path = str(tmp_path / input_name)
    tf.saved_model.save(module, path, signatures={"serving_default": module.f})
    return tf.saved_model.load(path).signatures["serving_default"]


def test_pixel_outputs_reads_the_od_api_and_the_older_fpn_keras_names(tmp_path):
    image = np.zeros((1, 40, 80, 3), np.uint8)
    od_api = _saved_signature(tmp_path, "input_tensor", {
        "detection_boxes": np.array([[[0.25, 0.5, 0.75, 1.0], [0, 0, 0, 0]]], np.float32),
        "detection_scores": np.array([[0.8, 0.0]], np.float32),
        "detection_classes": np.array([[3.0, 1.0]], np.float32), "num_detections": np.array([1.0], np.float32)})
    run, kind = pixel_outputs(od_api)
    out = run(image)
    assert kind == "od_api"
    # [ymin, xmin, ymax, xmax] x (40, 80, 40, 80) -> xyxy pixels [40, 10, 80, 30].
    np.testing.assert_allclose(out["boxes"], [[[40, 10, 80, 30], [-1, -1, -1, -1]]])
    np.testing.assert_array_equal(out["labels"], [[2, -1]])
    assert out["num_detections"].dtype == np.int32 and out["num_detections"][0] == 1

    legacy = _saved_signature(tmp_path, "images", {
        "detection_boxes": np.array([[[1, 2, 3, 4]]], np.float32), "detection_scores": np.array([[0.5]], np.float32),
        "detection_classes": np.array([[0]], np.int32), "num_detections": np.array([1], np.int32)})
    run, kind = pixel_outputs(legacy)
    out = run(image)
    assert kind == "legacy"
    np.testing.assert_array_equal(out["boxes"], [[[1, 2, 3, 4]]])
    np.testing.assert_array_equal(out["labels"], [[0]])

    other = _saved_signature(tmp_path, "x", {"logits": np.zeros((1, 2), np.float32)})
    with pytest.raises(ValueError, match=r"\['logits'\] are neither fpn_keras' \['boxes'"):
        pixel_outputs(other)
    assert contract({"boxes": None, "scores": None, "labels": None, "num_detections": None}) == "pixels"
