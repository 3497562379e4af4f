"""fpn_keras.precision: an fp32 detector run in bf16 without retraining (issue 17)."""

import keras
import numpy as np
import pytest

from fpn_keras import precision
from fpn_keras.boxes.iou import pairwise_iou


def _images(seed=0, n=2, size=64):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def test_names_policies_and_errors():
    assert [precision.canonical(n) for n in (None, "FP32", "bfloat16", "mixed_bfloat16", "float16")] == \
        ["fp32", "fp32", "bf16", "bf16", "fp16"]
    assert precision.policy_name("bf16") == "mixed_bfloat16"
    assert precision.policy_name("fp16") == "mixed_float16"
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16', 'fp16'\], received 'int4'"):
        precision.canonical("int4")


def test_hardware_note_names_the_missing_instructions():
    assert precision.hardware_note("fp32", flags=set(), has_gpu=False) is None
    assert precision.hardware_note("bf16", flags={"avx512_bf16"}, has_gpu=False) is None
    assert precision.hardware_note("bf16", flags={"amx_bf16"}, has_gpu=False) is None
    assert "AVX512_BF16" in precision.hardware_note("bf16", flags={"avx2"}, has_gpu=False)
    assert "GPUs" in precision.hardware_note("fp16", flags={"avx512_bf16"}, has_gpu=False)
    assert precision.hardware_note("fp16", flags=set(), has_gpu=True) is None


def test_with_policy_replaces_layer_policies_only():
    config = {"dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}},
              "layers": [{"config": {"dtype": "float32", "batch_shape": [None, 3]}},  # an InputLayer's dtype
                         {"config": {"dtype": {"class_name": "DTypePolicy", "config": {"name": "float32"}}}}]}
    out = precision._with_policy(config, "mixed_bfloat16")
    assert out["dtype"] == "mixed_bfloat16"
    assert out["layers"][0]["config"]["dtype"] == "float32"
    assert out["layers"][1]["config"]["dtype"] == "mixed_bfloat16"


def _matched(reference, other, min_iou=0.9):
    """Fraction of `reference`'s detections with a same-label detection of `other` at IoU >= min_iou."""
    n = int(reference["num_detections"][0])
    m = int(other["num_detections"][0])
    if n == 0:
        return 1.0
    iou = np.asarray(pairwise_iou(reference["boxes"][0, :n], other["boxes"][0, :m]))
    same = reference["labels"][0, :n, None] == other["labels"][0, None, :m]
    return float(((iou >= min_iou) & same).any(axis=1).mean())


def test_bf16_copy_keeps_weights_and_reproduces_fp32_detections(make_detector):
    keras.utils.set_random_seed(3)
    model = make_detector(max_detections=20)
    images = _images()
    model(images)
    copy = model.with_precision("bf16")
    assert copy is not model and precision.precision_of(copy) == "bf16"
    assert model.with_precision("fp32") is model
    conv = copy.backbone.get_layer("stem_conv")
    assert (conv.compute_dtype, conv.variable_dtype) == ("bfloat16", "float32")
    assert all(w.dtype == "float32" for w in copy.weights)
    for a, b in zip(model.weights, copy.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    fp32 = model.predict(images, verbose=0)
    bf16 = copy.predict(images, verbose=0)
    # Decoding and NMS in float32: float32 outputs, same keys and shapes.
    assert {k: (v.dtype, v.shape) for k, v in bf16.items()} == {k: (v.dtype, v.shape) for k, v in fp32.items()}
    # Raw head outputs: bf16 keeps 8 bits of mantissa (2^-8 = 0.4% per rounding); the class
    # logits sit near the prior's bias (-4.6, so one rounding is ~0.018): bound the error by
    # 2% of the largest magnitude plus 5% of the spread.
    raw32, raw16 = model(images), copy(images)
    for name in raw32:
        for level in raw32[name]:
            a, b = np.asarray(raw32[name][level]), np.asarray(raw16[name][level])
            assert b.dtype == np.float32
            assert np.abs(a - b).max() <= 0.02 * np.abs(a).max() + 0.05 * a.std(), (name, level, np.abs(a - b).max())
    assert _matched(fp32, bf16) >= 0.8
    assert np.abs(fp32["scores"][0, :5] - bf16["scores"][0, :5]).max() < 0.02


def test_predict_images_precision_argument_runs_the_copy(make_detector):
    keras.utils.set_random_seed(4)
    model = make_detector(max_detections=10)
    model.image_size = (64, 64)
    image = _images(1, n=1)[0].astype("uint8")
    model(image[None].astype("float32"))
    ours = model.predict_images([image], precision="bf16")[0]
    direct = model.with_precision("bf16").predict_images([image])[0]
    np.testing.assert_allclose(ours["scores"], direct["scores"], atol=1e-6)
    np.testing.assert_allclose(ours["boxes"], direct["boxes"], atol=1e-4)
    assert precision.precision_of(model) == "fp32"  # the model itself is unchanged


def test_faster_rcnn_bf16_copy_runs_with_float32_postprocessing(make_faster_rcnn):
    keras.utils.set_random_seed(5)
    model = make_faster_rcnn()
    images = _images(2)
    model(images)
    fp32 = model.predict(images, verbose=0)
    bf16 = model.with_precision("bf16").predict(images, verbose=0)
    assert bf16["boxes"].dtype == np.float32 and bf16["scores"].dtype == np.float32
    assert np.isfinite(bf16["boxes"]).all()
    assert abs(int(bf16["num_detections"][0]) - int(fp32["num_detections"][0])) <= \
        max(2, int(fp32["num_detections"][0]) // 5)


def test_unbuilt_detector_is_an_error(make_detector):
    with pytest.raises(ValueError, match="built detector"):
        precision.with_precision(make_detector(), "bf16")
