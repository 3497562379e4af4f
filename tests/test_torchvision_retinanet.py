"""torchvision retinanet_resnet50_fpn -> FPNDetector (convert/torchvision_retinanet.py), without torch.

tests/data/torchvision_retinanet_keys.json: the keys and shapes of torchvision's
retinanet_resnet50_fpn(num_classes=91).state_dict() outside backbone.body.
tests/data/torchvision_retinanet_reference.npz: torchvision's head outputs, anchors and
detections on seeded weights (bench/torchvision_retinanet_reference.py), which the
converted FPNDetector must reproduce. The 300 detections come from P3 / P4 (the most
candidates, the highest scores); the conventions that only touch P6 / P7 are caught by their
head outputs and anchors: with conv_padding="same" P6 (128x128) and P7 (160x224) are off by
~1.3 std, with anchor_strides="level" the 160x224 P6 / P7 anchors by 24 / 48 px.
"""

import json
import os

import numpy as np
import pytest

from fpn_keras.convert import from_torchvision
from fpn_keras.convert.resnet_layout import random_images, random_resnet_state_dict
from fpn_keras.convert.retinanet_layout import (head_summary, random_retinanet_state_dict,
                                                retinanet_state_dict_shapes)
from fpn_keras.convert.torchvision_retinanet import (COCO_80_IDS, load_torchvision_retinanet,
                                                     reorder_anchor_outputs)
from fpn_keras.layers.fpn import FeaturePyramid
from fpn_keras.models.detector import COCO_CLASS_NAMES, FPNDetector
from fpn_keras.models.retinanet import RetinaNet
from fpn_keras.models.torchvision_resnet import torchvision_resnet
from torchvision_helpers import close_up_to_ties, seeded_checkpoint

KEYS = os.path.join(os.path.dirname(__file__), "data", "torchvision_retinanet_keys.json")


def test_anchor_order_and_class_selection_by_hand():
    # bias[a_t * 2 + k] = 10 * a_t + k for torchvision anchor a_t = ratio * 3 + scale, 2 classes.
    bias = np.array([10 * a + k for a in range(9) for k in range(2)], np.float32)
    ours = reorder_anchor_outputs(bias, 2).reshape(9, 2)
    # our anchor a = scale * 3 + ratio holds torchvision's ratio * 3 + scale:
    assert ours[:, 0].tolist() == [0, 30, 60, 10, 40, 70, 20, 50, 80]
    assert ours[1].tolist() == [30, 31]
    kept = reorder_anchor_outputs(bias, 2, keep=[1]).reshape(9)
    assert kept.tolist() == [1, 31, 61, 11, 41, 71, 21, 51, 81]
    weight = np.arange(9 * 4 * 2, dtype=np.float32).reshape(36, 2, 1, 1)  # [A*4, C, kh, kw]
    assert reorder_anchor_outputs(weight, 4).shape == (36, 2, 1, 1)
    np.testing.assert_array_equal(reorder_anchor_outputs(weight, 4)[4:8], weight[12:16])  # ours 1 <- 3


def test_coco_ids_follow_our_class_names():
    assert len(COCO_80_IDS) == len(COCO_CLASS_NAMES) == 80
    # COCO category ids skip 12: "stop sign" is id 13, our 12th class.
    assert COCO_80_IDS[:12] == tuple(range(1, 12)) + (13,) and COCO_CLASS_NAMES[11] == "stop sign"
    assert COCO_80_IDS[-1] == 90 and COCO_CLASS_NAMES[-1] == "toothbrush"


def _detector(**neck_args):
    neck = FeaturePyramid(3, 7, 256, **{"extra_levels_source": "P5", **neck_args})
    detector = FPNDetector(backbone=torchvision_resnet(50), head=RetinaNet(num_classes=80, name="head"),
                           neck=neck)
    detector(np.zeros((1, 64, 64, 3), np.float32))
    return detector


def test_every_torchvision_key_has_a_place():
    with open(KEYS) as handle:
        shapes = json.load(handle)["shapes"]
    assert {k: tuple(v) for k, v in shapes.items()} == retinanet_state_dict_shapes(91)
    rng = np.random.default_rng(0)
    state = random_resnet_state_dict(50, prefix="backbone.body.")
    state.update({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()})
    detector = _detector()
    used = load_torchvision_retinanet(detector, state)
    assert len(used) == len([k for k in state if not k.endswith("num_batches_tracked")
                             and not k.startswith("backbone.body.fc.")])
    towers = detector.head.head
    # our anchor 1 (scale 0, ratio 1) takes torchvision's anchor 3; class 0 is COCO id 1 (person)
    bias = state["head.classification_head.cls_logits.bias"].reshape(9, 91)
    np.testing.assert_array_equal(np.asarray(towers.cls_logits.bias).reshape(9, 80)[1], bias[3, list(COCO_80_IDS)])
    kernel = state["backbone.fpn.extra_blocks.p6.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(np.asarray(detector.neck.extra["P6"].kernel), kernel)
    with pytest.raises(ValueError, match=r"P6/P7 source 'C5' \(torchvision: 'P5'\)"):
        load_torchvision_retinanet(_detector(extra_levels_source="C5"), state)


# ---- proof against torchvision: tests/data/torchvision_retinanet_reference.npz was written by
# bench/torchvision_retinanet_reference.py (torchvision's retinanet_resnet50_fpn on the same
# seeded weights, images and canvases; see there).

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "torchvision_retinanet_reference.npz")
SIZES = ((128, 128), (160, 224))  # even P5 / P6 sides; a canvas 2**7 does not divide
SEED, IMAGE_SEED = 14, 7  # bench/torchvision_reference.py's
# head_summary's sums: over 80 classes, and deltas weighted 1, 2, 3, 4 -> their std is sqrt(80), sqrt(30) x
SUM_STD = {"cls_sum": np.sqrt(80.0), "box_sum": np.sqrt(30.0), "cls_rows": 1.0, "box_rows": 1.0}


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, reference):
    state = random_retinanet_state_dict(random_resnet_state_dict(50, SEED, prefix="backbone.body."), SEED)
    return seeded_checkpoint(tmp_path_factory.mktemp("torchvision"), state, reference, "retinanet.pth")


@pytest.fixture(scope="module")
def converted(checkpoint):
    return from_torchvision("retinanet_resnet50_fpn", weights=checkpoint, image_size=(160, 224))


def _head_errors(raw, reference, name):
    """{(level, field): max |ours - torchvision| / the std of that output}."""
    errors = {}
    for level in range(3, 8):
        ours = head_summary(np.asarray(raw["cls_logits"][f"P{level}"][0]), np.asarray(raw["box_deltas"][f"P{level}"][0]))
        stds = reference[f"{name}/P{level}/stds"]
        for field, scale in SUM_STD.items():
            std = (stds[0] if field.startswith("cls") else stds[1]) * scale
            errors[(level, field)] = np.abs(ours[field] - reference[f"{name}/P{level}/{field}"]).max() / std
    return errors


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_outputs_and_detections_equal_torchvision(converted, reference, size):
    height, width = size
    name = f"{height}x{width}"
    images = random_images(height, width, IMAGE_SEED)
    raw = converted(images)
    errors = _head_errors(raw, reference, name)
    assert max(errors.values()) < 1e-4, {k: f"{v:.1e}" for k, v in errors.items() if v >= 1e-4}
    for level in range(3, 8):  # torchvision's anchors (offset, sizes, rounding, image // grid strides)
        anchors = np.asarray(raw["anchors"][f"P{level}"])
        assert anchors.shape[0] == 9 * np.prod(reference[f"{name}/P{level}/grid"])
        locations = anchors.shape[0] // 9
        rows = [9 * i + a for i in (0, locations // 2, locations - 1) for a in range(9)]
        np.testing.assert_allclose(anchors[rows], reference[f"{name}/P{level}/anchor_rows"], atol=1e-4)
    detections = {k: np.asarray(v[0]) for k, v in converted.detect(images).items()}
    expected = {k: reference[f"{name}/detections/{k}"] for k in ("boxes", "scores", "labels")}
    count = len(expected["scores"])
    assert int(detections["num_detections"]) == count == 300
    ids = np.array(converted.category_ids)[detections["labels"][:count]]  # label -> COCO id
    close_up_to_ties(ids[:100], expected["labels"][:100], expected["scores"][:100], atol=0)
    np.testing.assert_allclose(detections["scores"][:100], expected["scores"][:100], atol=1e-5)
    np.testing.assert_allclose(detections["boxes"][:100], expected["boxes"][:100], atol=1e-3)


def test_91_classes_give_torchvision_ids_as_labels(checkpoint, reference):
    detector = from_torchvision(weights=checkpoint, num_classes=91, image_size=(128, 128))
    assert detector.category_ids == list(range(91)) and detector.class_names[12] == "N/A"
    assert detector.class_names[13] == "stop sign"
    labels = np.asarray(detector.detect(random_images(128, 128, IMAGE_SEED))["labels"][0])
    np.testing.assert_array_equal(labels[:100], reference["128x128/detections/labels"][:100])


def test_converted_model_config_round_trips(converted):
    config = converted.get_config()
    assert config["category_ids"] == list(COCO_80_IDS) and config["class_names"][0] == "person"
    head = RetinaNet.from_config(converted.head.get_config())
    assert head.anchor_generator.get_config() == converted.head.anchor_generator.get_config()
    assert head.max_detections == 300 and head.anchor_generator.strides == "image_over_grid"
    neck = FeaturePyramid.from_config(converted.neck.get_config())
    assert neck.conv_padding == "symmetric"
    assert {l.epsilon for l in converted.backbone.layers if hasattr(l, "epsilon")} == {0.0}


def test_evaluate_refuses_other_category_ids(converted):
    from fpn_keras.commands import UsageError, _category_ids
    from fpn_keras.data.coco import ClassNames

    coco = ClassNames(COCO_CLASS_NAMES, COCO_80_IDS)
    assert _category_ids(converted, coco) == list(COCO_80_IDS)
    with pytest.raises(UsageError, match="category ids"):
        _category_ids(converted, ClassNames(COCO_CLASS_NAMES, range(1, 81)))


def test_unknown_model_and_missing_file():
    with pytest.raises(ValueError, match="unknown torchvision model"):
        from_torchvision("maskrcnn_resnet50_fpn")
    with pytest.raises(FileNotFoundError, match="COCO_V1"):
        from_torchvision(weights="/nonexistent/retinanet.pth")


def test_convert_command_writes_a_model_that_loads_and_detects_the_same(checkpoint, reference, tmp_path, capsys):
    from fpn_keras import cli
    from fpn_keras.commands import load_keras_model

    out = str(tmp_path / "retinanet.keras")
    assert cli.main(["convert", "--from", "torchvision:retinanet_resnet50_fpn", "--weights", checkpoint,
                     "--out", out, "--image-size", "128", "128"]) == 0
    model = load_keras_model(out)
    assert model.image_size == (128, 128) and model.category_ids == list(COCO_80_IDS)
    assert model.neck.conv_padding == "symmetric" and model.head.anchor_generator.round_cells
    detections = model.detect(random_images(128, 128, IMAGE_SEED))
    ids = np.array(model.category_ids)[np.asarray(detections["labels"][0])]
    np.testing.assert_array_equal(ids[:100], reference["128x128/detections/labels"][:100])
    np.testing.assert_allclose(np.asarray(detections["boxes"][0])[:100],
                               reference["128x128/detections/boxes"][:100], atol=1e-3)
    assert cli.main(["convert", "--from", "detectron2:retinanet", "--weights", checkpoint, "--out", out]) == 2
    assert cli.main(["convert", "--from", "torchvision:retinanet_resnet50_fpn", "--weights",
                     str(tmp_path / "missing.pth"), "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_coco_v1_weights_come_from_the_preset_cache(monkeypatch, tmp_path):
    # COCO_V1 is the preset "torchvision/retinanet_resnet50_fpn_coco" (convert/presets.py, tested
    # in tests/test_presets.py): offline (a closed port as the mirror), the error names the
    # published URL and the exact cache path to put the file at.
    from fpn_keras.convert.presets import DownloadError
    from fpn_keras.convert.retinanet_layout import WEIGHTS_URL

    monkeypatch.setenv("FPN_KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("FPN_KERAS_PRESET_URL", "http://127.0.0.1:1")
    expected = tmp_path / "checkpoints" / "retinanet_resnet50_fpn_coco-eeacb38b.pth"
    with pytest.raises(DownloadError, match="may be offline") as error:
        from_torchvision(weights="COCO_V1")
    assert WEIGHTS_URL in str(error.value) and f"put it at {expected} " in str(error.value)
    assert list(tmp_path.rglob("*")) == [tmp_path / "checkpoints"]  # no partial file left
