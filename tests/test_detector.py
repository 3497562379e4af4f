import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from fpn_keras.data import pipeline, synthetic
from fpn_keras.evaluation import evaluate_model
from fpn_keras.models.backbones import small_resnet
from fpn_keras.models.detector import FPNDetector
from fpn_keras.models.retinanet import RetinaNet


def fit_history(model, images, y, epochs, steps=5, lr=1e-3):
    model.compile(optimizer=keras.optimizers.Adam(lr))
    ds = tf.data.Dataset.from_tensors((images, y)).repeat()
    return model.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0).history


def test_logged_losses_are_real_and_fall(make_detector, make_batch):
    keras.utils.set_random_seed(1)
    model = make_detector()
    images, y = make_batch([[8, 8, 40, 30], [30, 20, 60, 60]], [0, 2])
    history = fit_history(model, images, y, epochs=4)
    for name in ("loss", "cls_loss", "box_loss"):
        assert all(v > 0 for v in history[name]), (name, history[name])
    assert history["loss"][-1] < 0.7 * history["loss"][0], history["loss"]
    np.testing.assert_allclose(np.add(history["cls_loss"], history["box_loss"]), history["loss"], rtol=1e-4)


def test_overfits_one_small_batch_to_ap50_above_0_9():
    keras.utils.set_random_seed(0)
    ds = synthetic.load("train", num_images=4, image_size=(128, 128), seed=3, max_objects=3, min_size=16)
    data = pipeline.prepare(ds, batch_size=4, image_size=(128, 128), max_boxes=8)
    images, y = next(iter(data))
    model = FPNDetector(
        num_classes=4, backbone=small_resnet((16, 32, 64, 128)),
        head=RetinaNet(num_classes=4, min_level=3, max_level=6, anchor_scale=2.0, channels=32,
                       num_convs=2, norm="group", name="head"),
        fpn_channels=32)
    fit_history(model, images, {"boxes": y["boxes"], "labels": y["labels"]}, epochs=1, steps=250, lr=2e-3)
    metrics = evaluate_model(model, data, verbose=False)
    assert metrics["AP50"] > 0.9, metrics


def test_save_load_round_trip_gives_identical_predictions(tmp_path, make_detector, make_batch):
    model = make_detector(bounding_box_format="yxyx", num_convs=2, norm="group", prior_probability=0.2)
    images, _ = make_batch([[0, 0, 1, 1]], [0])
    before = model.predict(images, verbose=0)
    assert before["num_detections"].min() > 0  # prior 0.2 > score threshold: real boxes compared
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode=True by default
    after = loaded.predict(images, verbose=0)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    assert loaded.bounding_box_format == "yxyx"
    assert len(loaded.head.head.cls_convs) == 2 and loaded.head.prior_probability == 0.2


def test_config_arguments_reach_the_sublayers(make_detector, make_batch):
    model = make_detector(num_classes=5, num_convs=3, channels=24, score_threshold=0.3,
                          max_detections=7, box_loss="giou")
    clone = FPNDetector.from_config(model.get_config())
    head = clone.head
    assert head.num_classes == 5 and head.box_loss == "giou"
    assert len(head.head.cls_convs) == 3 and head.head.cls_convs[0].filters == 24
    assert head.head.cls_logits.filters == 9 * 5
    assert clone.neck.channels == 16 and clone.neck.min_level == 3 and clone.neck.max_level == 5
    images, _ = make_batch([[0, 0, 1, 1]], [0])
    assert clone.predict(images, verbose=0)["boxes"].shape == (2, 7, 4)


def test_box_format_is_applied_to_targets_and_predictions(make_detector, make_batch):
    keras.utils.set_random_seed(2)
    xyxy = make_detector(prior_probability=0.3)
    images, _ = make_batch([[0, 0, 1, 1]], [0])
    xyxy.predict(images, verbose=0)
    config = xyxy.get_config()
    config["bounding_box_format"] = "yxyx"
    yxyx = FPNDetector.from_config(config)
    yxyx.predict(images, verbose=0)
    yxyx.set_weights(xyxy.get_weights())
    a = xyxy.predict(images, verbose=0)
    b = yxyx.predict(images, verbose=0)
    valid = a["labels"] >= 0
    np.testing.assert_allclose(b["boxes"][valid], a["boxes"][valid][:, [1, 0, 3, 2]], atol=1e-5)
    # Targets: the same boxes in both formats give the same loss.
    boxes = np.array([[[5, 8, 30, 40]]], "float32")
    y_xyxy = {"boxes": boxes, "labels": np.array([[1]], "int32")}
    y_yxyx = {"boxes": boxes[..., [1, 0, 3, 2]], "labels": np.array([[1]], "int32")}
    raw = xyxy(images[:1])
    loss_a = xyxy.compute_loss(images[:1], y_xyxy, raw)
    loss_b = yxyx.compute_loss(images[:1], y_yxyx, yxyx(images[:1]))
    np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-5)


def test_images_without_objects_and_degenerate_boxes_train_without_nan(make_detector):
    keras.utils.set_random_seed(3)
    model = make_detector()
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = {"boxes": np.array([[[-1, -1, -1, -1], [-1, -1, -1, -1]],
                            [[10, 10, 10, 30], [20, 20, 20, 20]]], "float32"),  # zero-area boxes
         "labels": np.array([[-1, -1], [1, 2]], "int32")}
    history = fit_history(model, images, y, epochs=2, steps=3)
    assert all(math.isfinite(v) for v in history["loss"])
    assert all(v == 0.0 for v in history["box_loss"])  # nothing positive to regress


def test_boxes_outside_the_image_are_clipped(make_detector):
    model = make_detector()
    boxes, labels = model._prepare_targets(
        {"boxes": np.array([[[-10, 5, 80, 70]]], "float32"), "labels": np.array([[1]], "int32")}, 64, 64)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(boxes), [[[0, 5, 64, 64]]])


def test_ragged_targets_are_accepted(make_detector):
    keras.utils.set_random_seed(4)
    model = make_detector()
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = {"boxes": tf.ragged.constant([[[8, 8, 40, 30]], [[30, 20, 60, 60], [1, 1, 20, 20]]],
                                     ragged_rank=1, dtype=tf.float32),
         "labels": tf.ragged.constant([[0], [2, 1]], dtype=tf.int32)}
    model.compile(optimizer="adam")
    ds = tf.data.Dataset.from_tensors((images, y)).repeat(2)
    history = model.fit(ds, epochs=1, verbose=0).history
    assert history["loss"][0] > 0
    # The same targets padded with -1 give exactly the same loss.
    padded = {"boxes": np.array([[[8, 8, 40, 30], [-1, -1, -1, -1]], [[30, 20, 60, 60], [1, 1, 20, 20]]],
                                "float32"),
              "labels": np.array([[0, -1], [2, 1]], "int32")}
    raw = model(images, training=False)
    ragged_loss = float(model.compute_loss(images, y, raw))
    assert ragged_loss > 0 and ragged_loss == pytest.approx(float(model.compute_loss(images, padded, raw)),
                                                            rel=1e-6)


def test_label_out_of_range_fails_the_step_with_a_clear_error(make_detector, make_batch):
    model = make_detector(num_classes=3)
    images, y = make_batch([[8, 8, 40, 30]], [7])
    model.compile(optimizer="adam")
    with pytest.raises(Exception, match=r"num_classes\) = \[0, 3\)[\s\S]*7"):
        model.fit(tf.data.Dataset.from_tensors((images, y)), epochs=1, verbose=0)


@pytest.mark.parametrize("shape", [(2, 64, 64, 1), (64, 64, 3), (2, 64, 64, 4)])
def test_wrong_image_shape_names_the_shape(shape, make_detector):
    model = make_detector()
    with pytest.raises(ValueError, match=r"received shape \(.*" + str(shape[-1])):
        model.predict(np.zeros(shape, "float32"), verbose=0)


def test_target_dict_errors(make_detector):
    model = make_detector()
    with pytest.raises(ValueError, match="targets must be a dict"):
        model._prepare_targets({"bbox": np.zeros((1, 1, 4))}, 64, 64)


def test_default_detector_is_resnet50_retinanet_coco():
    model = FPNDetector()
    assert model.num_classes == 80 and model.class_names[0] == "person"
    assert model.backbone.name == "resnet50_backbone"
    out = model.predict(np.zeros((1, 128, 128, 3), "uint8"), verbose=0)
    assert out["boxes"].shape == (1, 100, 4) and out["labels"].shape == (1, 100)


def test_compile_jit_default_is_off_under_tensorflow_and_explicit_values_pass_through(make_detector):
    model = make_detector()
    model.compile(optimizer="adam")
    assert keras.backend.backend() == "tensorflow" and model.jit_compile is False
    model.compile(optimizer="adam", jit_compile=True)
    assert model.jit_compile is True and model.head.nms_implementation == "generic"
    model.compile(optimizer="adam", jit_compile=False)
    assert model.jit_compile is False and model.head.nms_implementation == "auto"


def test_import_fpn_keras_is_enough_to_reload_a_model_file_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    from fpn_keras.models.backbones import small_resnet

    model = FPNDetector(num_classes=2, backbone=small_resnet((8, 16, 16, 16)),
                        head=RetinaNet(num_classes=2, min_level=3, max_level=5, channels=8, num_convs=1),
                        fpn_channels=8, class_names=["a", "b"])
    model(np.zeros((1, 64, 64, 3), "float32"))
    path = str(tmp_path / "m.keras")
    model.save(path)
    code = ("import keras, fpn_keras, numpy as np; m = keras.saving.load_model(%r); "
            "print(type(m).__name__, m.class_names, m.predict_on_batch(np.zeros((1, 64, 64, 3)))['boxes'].shape)" % path)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "FPNDetector ['a', 'b'] (1, 100, 4)" in result.stdout


def test_export_writes_the_whole_inference_path_or_refuses(tmp_path):
    import tensorflow as tf

    from fpn_keras.models.backbones import small_resnet

    model = FPNDetector(num_classes=2, backbone=small_resnet((8, 16, 16, 16)),
                        head=RetinaNet(num_classes=2, min_level=3, max_level=5, channels=8, num_convs=1),
                        fpn_channels=8)
    model(np.zeros((1, 64, 64, 3), "float32"))
    with pytest.raises(ValueError, match="image_size"):
        model.export(str(tmp_path / "a"))
    with pytest.raises(ValueError, match="fpn_keras.export"):
        model.export(str(tmp_path / "b"), format="openvino", image_size=(64, 64))
    model.export(str(tmp_path / "sm"), image_size=(64, 64))
    outputs = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"](
        images=tf.zeros([1, 80, 96, 3], tf.uint8))
    assert {"boxes", "scores", "labels", "num_detections"} == set(outputs)
    assert outputs["boxes"].shape == (1, 100, 4)


def test_predict_images_gives_boxes_in_each_images_pixels_like_the_saved_model(tmp_path):
    from PIL import Image

    from fpn_keras.export import saved_model

    model = FPNDetector(num_classes=2, backbone=small_resnet((8, 16, 16, 16)),
                        head=RetinaNet(num_classes=2, min_level=3, max_level=5, channels=8, num_convs=1,
                                       score_threshold=0.0),
                        fpn_channels=8, image_size=(64, 64), bounding_box_format="yxyx")
    model(np.zeros((1, 64, 64, 3), "float32"))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((50, 100), (128, 64))]
    Image.fromarray(images[1]).save(tmp_path / "b.png")
    results = model.predict_images([images[0], str(tmp_path / "b.png")])
    saved_model(model, str(tmp_path / "sm"))  # image_size from the model
    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    for image, result in zip(images, results):
        expected = serve(images=tf.constant(image[None]))
        n = int(expected["num_detections"][0])
        assert len(result["boxes"]) == n > 0
        np.testing.assert_allclose(result["boxes"], expected["boxes"][0, :n], atol=1e-3)
        np.testing.assert_allclose(result["scores"], expected["scores"][0, :n], atol=1e-5)
        h, w = image.shape[:2]
        assert result["boxes"][:, [0, 2]].max() <= h and result["boxes"][:, [1, 3]].max() <= w  # yxyx
    # the size travels with the model file
    model.save(str(tmp_path / "m.keras"))
    assert keras.saving.load_model(str(tmp_path / "m.keras")).image_size == (64, 64)
