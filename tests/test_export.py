import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fpn_keras.export import saved_model
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
    np.testing.assert_allclose(out["detection_boxes"].numpy()[0, :n], expected["boxes"][0, :n], atol=1e-3)
    np.testing.assert_allclose(out["detection_scores"].numpy()[0, :n], expected["scores"][0, :n], atol=1e-5)
    np.testing.assert_array_equal(out["detection_classes"].numpy()[0, :n], expected["labels"][0, :n])

    # A 2x larger input (nearest-upsampled) is resized back inside: boxes come out 2x, in its pixels.
    big = np.repeat(np.repeat(image, 2, axis=1), 2, axis=2)
    out_big = loaded.signatures["serving_default"](images=tf.constant(big))
    np.testing.assert_allclose(out_big["detection_boxes"].numpy()[0, :n], 2 * expected["boxes"][0, :n],
                               atol=2e-3)

    buffer = io.BytesIO()
    Image.fromarray(image[0]).save(buffer, format="PNG")
    out_bytes = loaded.signatures["serve_image_bytes"](image_bytes=tf.constant([buffer.getvalue()]))
    np.testing.assert_allclose(out_bytes["detection_boxes"].numpy()[0, :n], expected["boxes"][0, :n],
                               atol=1e-3)


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
        np.testing.assert_allclose(out[prefix + "detection_boxes"][0, :n], expected["boxes"][0, :n], atol=1e-3)
        np.testing.assert_allclose(out[prefix + "detection_scores"][0, :n], expected["scores"][0, :n], atol=1e-4)

    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in ("serving_default", "serve_image_bytes", "detection_boxes", "num_detections"):
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
