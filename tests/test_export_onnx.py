"""ONNX export (tf2onnx): decoding and NonMaxSuppression inside, the same detections as
Keras in onnxruntime, for RetinaNet and Faster R-CNN.

Tiny models with random weights; the class layer's kernel is scaled x10 so that scores
spread out (with the raw initialisation they are all 0.30 +- 0.002: rounding in the last
float32 bit could then swap near-tied slots, which would test tie-breaking rather than the
export). Detections are compared slot by slot.
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")

from fpn_keras.export.onnx import OnnxRunner, convert, op_types  # noqa: E402
from fpn_keras.export.outputs import OUTPUT_NAMES  # noqa: E402
from fpn_keras.models.backbones import small_resnet  # noqa: E402
from fpn_keras.models.detector import FPNDetector  # noqa: E402
from fpn_keras.models.faster_rcnn import FasterRCNN  # noqa: E402
from fpn_keras.models.retinanet import RetinaNet  # noqa: E402
from fpn_keras.models.rpn import RPN  # noqa: E402

SIZE = (64, 64)


def _spread_scores(model, image):
    model(image)  # builds
    layer = model.head.class_specific_layers()[0]  # RetinaNet's class logits conv, Faster R-CNN's cls_score
    layer.kernel.assign(layer.kernel * 10.0)


def _retinanet():
    keras.utils.set_random_seed(0)
    return FPNDetector(
        num_classes=3, backbone=small_resnet((8, 16, 32, 64)),
        head=RetinaNet(num_classes=3, min_level=3, max_level=5, anchor_scale=2.0, channels=16,
                       num_convs=1, prior_probability=0.3, max_detections=20, name="head"),
        fpn_channels=16, bounding_box_format="xywh", class_names=["a", "b", "c"], image_size=SIZE)


def _faster_rcnn():
    keras.utils.set_random_seed(0)
    rpn = RPN(anchor_scale=4.0, pre_nms_topk_test=200, post_nms_topk_test=100, name="rpn")
    return FPNDetector(backbone=small_resnet((8, 16, 32, 64)), fpn_channels=16, bounding_box_format="xywh",
                       head=FasterRCNN(num_classes=3, rpn=rpn, fc_dim=64, max_detections=30, name="head"),
                       image_size=SIZE)


def _assert_same_detections(expected, out):
    n = int(expected["num_detections"][0])
    assert n > 0 and out["num_detections"].dtype == np.int32 and int(out["num_detections"][0]) == n
    np.testing.assert_allclose(out["boxes"][0, :n], expected["boxes"][0, :n], atol=1e-3)  # pixels
    np.testing.assert_array_equal(out["labels"][0, :n], expected["labels"][0, :n])
    np.testing.assert_allclose(out["scores"][0, :n], expected["scores"][0, :n], atol=1e-5)
    np.testing.assert_array_equal(out["labels"][0, n:], -1)


@pytest.mark.parametrize("build", [_retinanet, _faster_rcnn], ids=["retinanet", "faster_rcnn"])
def test_onnx_matches_keras_in_onnxruntime(build):
    model = build()
    image = np.random.default_rng(0).uniform(0, 255, (1, *SIZE, 3)).astype("float32")
    _spread_scores(model, image)
    expected = model.predict(image, verbose=0)
    content = convert(model)
    ops = op_types(content)
    assert ("", "NonMaxSuppression") in ops, ops  # NMS inside the graph, as the standard op
    assert {domain for domain, _ in ops} == {""}, ops  # no custom ops

    runner = OnnxRunner(content, num_threads=2)
    assert (runner.input_name, runner.input_shape, runner.input_dtype) == ("images", (1, *SIZE, 3), np.float32)
    assert sorted(runner.output_names) == sorted(OUTPUT_NAMES)
    out = runner(image[0])  # one [H, W, 3] image is batched
    assert out["boxes"].shape == (1, model.head.max_detections, 4) and out["labels"].dtype == np.int32
    _assert_same_detections(expected, out)


def test_cli_exports_a_uint8_onnx_file_and_the_runner_checks_its_input(tmp_path, capsys):
    from fpn_keras import cli

    model = _retinanet()
    image = np.random.default_rng(1).integers(0, 255, (1, *SIZE, 3)).astype("uint8")
    _spread_scores(model, image.astype("float32"))
    expected = model.predict(image.astype("float32"), verbose=0)
    model.save(str(tmp_path / "m.keras"))
    code = cli.main(["export", "--model", str(tmp_path / "m.keras"), "--format", "onnx",
                     "--input-type", "uint8", "--out", str(tmp_path / "m.onnx")])
    assert code == 0, capsys.readouterr()
    assert "ONNX, input [1, 64, 64, 3] uint8" in capsys.readouterr().out

    runner = OnnxRunner(str(tmp_path / "m.onnx"))
    assert runner.input_dtype == np.uint8
    _assert_same_detections(expected, runner(image))
    with pytest.raises(ValueError, match=r"m\.onnx takes images of shape \[1, 64, 64, 3\] \(uint8.*"
                                         r"received shape \[1, 32, 64, 3\]"):
        runner(np.zeros((1, 32, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="takes uint8 images; received float32"):
        runner(image.astype("float32"))
    code = cli.main(["export", "--model", str(tmp_path / "m.keras"), "--format", "onnx",
                     "--outputs", "od_api", "--out", str(tmp_path / "x.onnx")])
    assert code == 2 and "--outputs applies to --format saved_model only" in capsys.readouterr().err
