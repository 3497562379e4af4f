import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fpn_keras.export import saved_model
from fpn_keras.export.saved_model import serving_functions
from fpn_keras.models.backbones import small_resnet
from fpn_keras.models.detector import FPNDetector
from fpn_keras.models.retinanet import RetinaNet


def test_saved_model_signatures_match_keras_predictions(tmp_path):
    model = FPNDetector(
        num_classes=3, backbone=small_resnet((8, 16, 32, 64)),
        head=RetinaNet(num_classes=3, min_level=3, max_level=5, anchor_scale=2.0, channels=16,
                       num_convs=1, prior_probability=0.3, max_detections=20, name="head"),
        fpn_channels=16, bounding_box_format="xywh", class_names=["a", "b", "c"])
    image = np.random.default_rng(0).integers(0, 255, (1, 64, 64, 3)).astype("uint8")
    expected = model.predict(image.astype("float32"), verbose=0)
    assert expected["num_detections"][0] > 0

    path = saved_model(model, str(tmp_path / "tiny" / "1"), image_size=(64, 64))
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert open(os.path.join(path, "labels.txt")).read().split() == ["a", "b", "c"]
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "serve_image_bytes"}

    out = loaded.signatures["serving_default"](images=tf.constant(image))
    n = int(expected["num_detections"][0])
    assert int(out["num_detections"][0]) == n
    assert set(out) == {"boxes", "scores", "labels", "num_detections"}
    np.testing.assert_allclose(out["boxes"].numpy()[0, :n], expected["boxes"][0, :n], atol=1e-3)
    np.testing.assert_allclose(out["scores"].numpy()[0, :n], expected["scores"][0, :n], atol=1e-5)
    np.testing.assert_array_equal(out["labels"].numpy()[0, :n], expected["labels"][0, :n])

    # A 2x larger input (nearest-upsampled) is resized back inside: boxes come out 2x, in its pixels.
    big = np.repeat(np.repeat(image, 2, axis=1), 2, axis=2)
    out_big = loaded.signatures["serving_default"](images=tf.constant(big))
    np.testing.assert_allclose(out_big["boxes"].numpy()[0, :n], 2 * expected["boxes"][0, :n],
                               atol=2e-3)

    buffer = io.BytesIO()
    Image.fromarray(image[0]).save(buffer, format="PNG")
    out_bytes = loaded.signatures["serve_image_bytes"](image_bytes=tf.constant([buffer.getvalue()]))
    np.testing.assert_allclose(out_bytes["boxes"].numpy()[0, :n], expected["boxes"][0, :n],
                               atol=1e-3)


def test_od_api_outputs_equal_the_pixel_outputs_transformed_by_hand(tmp_path):
    """outputs="od_api": the TF OD API exporter's contract (exporter_lib_v2.py): input
    `input_tensor`; detection_boxes [ymin, xmin, ymax, xmax] / (H, W) of the input image,
    detection_classes float 1-based, num_detections float, zero padding (+1 on classes)."""
    model = FPNDetector(
        num_classes=3, backbone=small_resnet((8, 16, 32, 64)),
        head=RetinaNet(num_classes=3, min_level=3, max_level=5, anchor_scale=2.0, channels=16,
                       num_convs=1, prior_probability=0.3, max_detections=20, name="head"),
        fpn_channels=16, bounding_box_format="xywh", class_names=["a", "b", "c"])
    image = np.random.default_rng(0).integers(0, 255, (1, 48, 80, 3)).astype("uint8")  # not square
    model(np.zeros((1, 64, 64, 3), "float32"))  # builds
    # Today's outputs: the function the default SavedModel serves (equal to it: the test above).
    scores = serving_functions(model, (64, 64))[0](tf.constant(image))["scores"].numpy()[0]
    model.head.score_threshold = float(scores[9] + scores[10]) / 2  # 10 detections, 10 padding rows
    pixels = serving_functions(model, (64, 64))[0]
    od_api = tf.saved_model.load(saved_model(model, str(tmp_path / "od"), image_size=(64, 64), outputs="od_api"))
    signature = od_api.signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["input_tensor"]
    assert list(od_api.signatures["serve_image_bytes"].structured_input_signature[1]) == ["input_tensor"]
    assert {k: v.dtype for k, v in signature.structured_outputs.items()} == {
        "detection_boxes": tf.float32, "detection_scores": tf.float32, "detection_classes": tf.float32,
        "num_detections": tf.float32}

    ours = {k: v.numpy() for k, v in pixels(tf.constant(image)).items()}
    theirs = {k: v.numpy() for k, v in signature(input_tensor=tf.constant(image)).items()}
    n = int(ours["num_detections"][0])
    assert n == 10 and theirs["num_detections"].dtype == np.float32 and theirs["num_detections"][0] == 10.0
    x, y, w, h = np.moveaxis(ours["boxes"][0, :n], -1, 0)
    by_hand = np.stack([y / 48, x / 80, (y + h) / 48, (x + w) / 80], -1)
    np.testing.assert_allclose(theirs["detection_boxes"][0, :n], by_hand, atol=1e-5)
    assert 0.0 <= theirs["detection_boxes"].min() and theirs["detection_boxes"].max() <= 1.0
    np.testing.assert_allclose(theirs["detection_scores"][0, :n], ours["scores"][0, :n], atol=1e-6)
    np.testing.assert_array_equal(theirs["detection_classes"][0, :n], ours["labels"][0, :n] + 1.0)
    # Padding as the OD API's: zero boxes and scores, class 0 + label_id_offset 1.
    np.testing.assert_array_equal(theirs["detection_boxes"][0, n:], 0.0)
    np.testing.assert_array_equal(theirs["detection_scores"][0, n:], 0.0)
    np.testing.assert_array_equal(theirs["detection_classes"][0, n:], 1.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="`input_tensor` must be uint8"):
        signature(input_tensor=tf.constant(image[0]))

    # fpn-keras predict's reader turns them back into ours (xyxy pixels, 0-based labels).
    from fpn_keras.export.outputs import pixel_outputs

    run, kind = pixel_outputs(signature)
    back = run(image)
    assert kind == "od_api"
    np.testing.assert_allclose(back["boxes"][0, :n], np.stack([x, y, x + w, y + h], -1), atol=1e-3)
    np.testing.assert_array_equal(back["labels"][0], ours["labels"][0])


FRESH_PROCESS = """
import sys
sys.modules["fpn_keras"] = None  # this process cannot import fpn_keras
import numpy as np, tensorflow as tf
path, data = sys.argv[1], np.load(sys.argv[2])
model = tf.saved_model.load(path)
out = model.signatures["serving_default"](images=tf.constant(data["image"]))
out_bytes = model.signatures["serve_image_bytes"](image_bytes=tf.constant([data["png"].tobytes()]))
np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()},
         **{"bytes_" + k: v.numpy() for k, v in out_bytes.items()})
"""


def test_saved_model_in_a_fresh_process_without_fpn_keras(tmp_path):
    import subprocess
    import sys

    from fpn_keras.models.faster_rcnn import FasterRCNN
    from fpn_keras.models.rpn import RPN

    rpn = RPN(anchor_scale=4.0, pre_nms_topk_test=200, post_nms_topk_test=100, name="rpn")
    model = FPNDetector(backbone=small_resnet((8, 16, 32, 64)), fpn_channels=16,
                        head=FasterRCNN(num_classes=3, rpn=rpn, fc_dim=64, max_detections=20, name="head"))
    image = np.random.default_rng(1).integers(0, 255, (1, 64, 64, 3)).astype("uint8")
    expected = model.predict(image.astype("float32"), verbose=0)
    path = saved_model(model, str(tmp_path / "frcnn" / "1"), image_size=(64, 64))
    buffer = io.BytesIO()
    Image.fromarray(image[0]).save(buffer, format="PNG")
    np.savez(tmp_path / "in.npz", image=image, png=np.frombuffer(buffer.getvalue(), np.uint8))
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, path, str(tmp_path / "in.npz"),
                             str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    n = int(expected["num_detections"][0])
    assert n > 0 and int(out["num_detections"][0]) == n
    for prefix in ("", "bytes_"):
        np.testing.assert_allclose(out[prefix + "boxes"][0, :n], expected["boxes"][0, :n], atol=1e-3)
        np.testing.assert_allclose(out[prefix + "scores"][0, :n], expected["scores"][0, :n], atol=1e-4)

    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in ("serving_default", "serve_image_bytes", "outputs['boxes']", "outputs['labels']",
                 "outputs['num_detections']"):
        assert name in shown.stdout

    # Wrong dtype or rank: rejected by the signature, before any NMS runs.
    loaded = tf.saved_model.load(path)
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="uint8|dtype|float"):
        loaded.signatures["serving_default"](images=tf.constant(image.astype("float32")))
    expected_shape = r"must be uint8 \[batch, height, width, 3\] RGB; received shape"
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected_shape):  # one image, no batch axis
        loaded.signatures["serving_default"](images=tf.constant(image[0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected_shape + r"\D*1\D*\d+\D*\d+\D*4"):  # RGBA
        loaded.signatures["serving_default"](images=tf.constant(np.concatenate([image, image[..., :1]], -1)))


def test_bf16_saved_model_computes_in_bf16_with_float32_outputs(tmp_path):
    """`fpn-keras export --precision bf16`: the SavedModel of `with_precision("bf16")` gives
    that copy's detections (float32 outputs), which differ from fp32's by bf16 rounding only."""
    import keras

    keras.utils.set_random_seed(2)
    model = FPNDetector(
        num_classes=3, backbone=small_resnet((8, 16, 32, 64)),
        head=RetinaNet(num_classes=3, min_level=3, max_level=5, anchor_scale=2.0, channels=16,
                       num_convs=1, prior_probability=0.3, max_detections=20, name="head"),
        fpn_channels=16, class_names=["a", "b", "c"])
    image = np.random.default_rng(1).integers(0, 255, (1, 64, 64, 3)).astype("uint8")
    fp32 = model.predict(image.astype("float32"), verbose=0)
    bf16_model = model.with_precision("bf16")
    bf16 = bf16_model.predict(image.astype("float32"), verbose=0)
    loaded = tf.saved_model.load(saved_model(bf16_model, str(tmp_path / "bf16" / "1"), image_size=(64, 64)))
    out = loaded.signatures["serving_default"](images=tf.constant(image))
    assert {k: v.dtype for k, v in out.items()} == {"boxes": tf.float32, "scores": tf.float32,
                                                    "labels": tf.int32, "num_detections": tf.int32}
    n = int(bf16["num_detections"][0])
    assert n > 0 and int(out["num_detections"][0]) == n
    # The graph computes in bf16: its scores are the bf16 copy's, not fp32's (with
    # prior 0.3 the top scores differ by bf16 rounding, ~1e-3, between the two precisions).
    np.testing.assert_allclose(out["scores"].numpy()[0, :n], bf16["scores"][0, :n], atol=5e-3)
    np.testing.assert_allclose(out["boxes"].numpy()[0, :5], bf16["boxes"][0, :5], atol=0.5)
    assert np.abs(bf16["scores"][0, :5] - fp32["scores"][0, :5]).max() > 0  # bf16 really ran
