"""torchvision retinanet_resnet50_fpn_v2 -> FPNDetector (convert/torchvision_retinanet_v2.py), without torch.

tests/data/torchvision_retinanet_v2_reference.npz (bench/torchvision_retinanet_v2_reference.py):
torchvision's state_dict layout and, on seeded weights, every FPN level, the head outputs and
anchors of each level and the 300 detections on 100x136 and 123x157 canvases (not multiples
of 32) and on a 100x136 image padded to 128x160 as GeneralizedRCNNTransform pads.
"""

import json
import os

import numpy as np
import pytest

from fpn_keras.convert import from_torchvision
from fpn_keras.convert.resnet_layout import feature_summary, padded_canvas, random_images, random_resnet_state_dict
from fpn_keras.convert.retinanet_layout import (COCO_80_IDS, head_summary, random_retinanet_v2_state_dict,
                                                retinanet_v2_state_dict_shapes)
from fpn_keras.convert.torchvision_retinanet import torchvision_retinanet_detector
from fpn_keras.convert.torchvision_retinanet_v2 import load_torchvision_retinanet_v2
from fpn_keras.models.retinanet import RetinaNet
from torchvision_helpers import seeded_checkpoint, unmatched_detections

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "torchvision_retinanet_v2_reference.npz")
CASES = {"100x136": ((100, 136), (100, 136)), "123x157": ((123, 157), (123, 157)),
         "100x136_in_128x160": ((100, 136), (128, 160))}  # the bench's: (image size, canvas)
SEED, IMAGE_SEED = 14, 7  # bench/torchvision_reference.py's
# head_summary's sums: over 80 classes, and deltas weighted 1, 2, 3, 4 -> their std is sqrt(80), sqrt(30) x
SUM_STD = {"cls_sum": np.sqrt(80.0), "box_sum": np.sqrt(30.0), "cls_rows": 1.0, "box_rows": 1.0}


def _state(seed=SEED):
    return random_retinanet_v2_state_dict(random_resnet_state_dict(50, seed, prefix="backbone.body."), seed)


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, reference):
    return seeded_checkpoint(tmp_path_factory.mktemp("torchvision"), _state(), reference, "retinanet_v2.pth")


@pytest.fixture(scope="module")
def converted(checkpoint):
    return from_torchvision("retinanet_resnet50_fpn_v2", weights=checkpoint, image_size=(128, 160))


def test_every_torchvision_key_has_a_place(reference, converted):
    shapes = json.loads(str(reference["state_dict_shapes"]))
    assert {k: tuple(v) for k, v in shapes.items()} == retinanet_v2_state_dict_shapes(91)
    state, detector = _state(seed=0), converted  # the seeded reference weights are reloaded below
    used = load_torchvision_retinanet_v2(detector, state)
    assert sorted(used) == sorted(k for k in state if not k.endswith("num_batches_tracked"))
    towers = detector.head.head
    np.testing.assert_array_equal(np.asarray(towers.box_norms[2].gamma), state["head.regression_head.conv.2.1.weight"])
    np.testing.assert_array_equal(np.asarray(towers.cls_convs[0].bias), 0.0)  # torchvision's conv has none
    assert towers.cls_norms[0].groups == 32 and towers.cls_norms[0].epsilon == 1e-5
    kernel = np.asarray(detector.neck.extra["P6"].kernel)  # from C5: 2048 inputs
    np.testing.assert_array_equal(kernel, state["backbone.fpn.extra_blocks.p6.weight"].transpose(2, 3, 1, 0))
    v1 = torchvision_retinanet_detector(image_size=(64, 64))  # unbuilt: the layout check comes first
    with pytest.raises(ValueError, match=r"P6/P7 source 'P5' \(torchvision: 'C5'\).*head norm None"):
        load_torchvision_retinanet_v2(v1, state)
    load_torchvision_retinanet_v2(detector, _state())


@pytest.mark.parametrize("case", CASES)
def test_pyramid_head_and_detections_equal_torchvision(converted, reference, case):
    image_size, canvas = CASES[case]
    images = padded_canvas(random_images(*image_size, IMAGE_SEED), *canvas)
    detector = converted  # its stored image_size (128x160) only matters to predict_images
    features = detector.neck(detector.backbone(images))
    raw = detector.head(features, image_shape=canvas)
    errors = {}
    for level in range(3, 8):
        prefix = f"{case}/P{level}/"
        ours = {f"feature_{k}": v for k, v in feature_summary(np.asarray(features[f"P{level}"][0])).items()}
        std = reference[prefix + "feature_stats"][1]  # FPN level: relative to its std
        for field, factor in (("pixels", 1.0), ("channel_sum", 16.0)):  # a sum of 256: 16 x the std
            difference = ours[f"feature_{field}"] - reference[prefix + f"feature_{field}"]
            errors[(f"P{level}", field)] = np.abs(difference).max() / (std * factor)
        head = head_summary(np.asarray(raw["cls_logits"][f"P{level}"][0]),
                            np.asarray(raw["box_deltas"][f"P{level}"][0]))
        for field, factor in SUM_STD.items():
            std = reference[prefix + "stds"][0 if field.startswith("cls") else 1] * factor
            errors[(f"P{level}", field)] = np.abs(head[field] - reference[prefix + field]).max() / std
        anchors = np.asarray(raw["anchors"][f"P{level}"])
        assert anchors.shape[0] == 9 * np.prod(reference[prefix + "grid"])
        locations = anchors.shape[0] // 9
        rows = [9 * i + a for i in (0, locations // 2, locations - 1) for a in range(9)]
        np.testing.assert_allclose(anchors[rows], reference[prefix + "anchor_rows"], atol=1e-4)
    assert max(errors.values()) < 1e-4, {k: f"{v:.1e}" for k, v in errors.items() if v >= 1e-4}
    detections = {k: np.asarray(v[0]) for k, v in detector.head.detect(raw, canvas).items()}
    expected = {k: reference[f"{case}/detections/{k}"] for k in ("boxes", "scores", "labels")}
    count = int(detections["num_detections"])
    assert count == len(expected["scores"]) == 300
    ours = {"boxes": detections["boxes"][:count], "scores": detections["scores"][:count],
            "labels": np.array(detector.category_ids)[detections["labels"][:count]]}
    unmatched = unmatched_detections(ours, expected)
    print(f"{case}: max relative error {max(errors.values()):.1e} ({max(errors, key=errors.get)}), "
          f"{count - len(unmatched)} / {count} detections matched, boxes within "
          f"{np.abs(ours['boxes'] - expected['boxes']).max():.1e} px in order")  # pytest -s
    assert len(unmatched) <= 0.01 * count, (unmatched, expected["scores"][unmatched])
    # what is left unmatched sits at the 300-detection cut: a score tie with our last one
    assert all(abs(expected["scores"][i] - ours["scores"][-1]) < 1e-4 for i in unmatched)


def test_config_round_trips_with_the_v2_options(converted):
    head = RetinaNet.from_config(converted.head.get_config())
    assert head.norm == "group" and head.head.norm_epsilon == 1e-5 and head.box_loss == "giou"
    assert head.head.cls_norms[0].epsilon == 1e-5
    assert converted.neck.extra_levels_source == "C5" and converted.category_ids == list(COCO_80_IDS)
    assert {l.epsilon for l in converted.backbone.layers if hasattr(l, "epsilon")} == {1e-5}


def test_convert_command_writes_a_model_that_detects_the_same(checkpoint, reference, tmp_path):
    from fpn_keras import cli
    from fpn_keras.commands import load_keras_model

    out = str(tmp_path / "retinanet_v2.keras")
    assert cli.main(["convert", "--from", "torchvision:retinanet_resnet50_fpn_v2", "--weights", checkpoint,
                     "--out", out, "--image-size", "128", "160"]) == 0
    model = load_keras_model(out)
    assert model.head.head.norm_epsilon == 1e-5 and model.neck.extra_levels_source == "C5"
    images = padded_canvas(random_images(100, 136, IMAGE_SEED), 128, 160)
    detections = {k: np.asarray(v[0]) for k, v in model.detect(images).items()}
    expected = {k: reference[f"100x136_in_128x160/detections/{k}"] for k in ("boxes", "scores", "labels")}
    ours = {"boxes": detections["boxes"], "scores": detections["scores"],
            "labels": np.array(model.category_ids)[detections["labels"]]}
    assert len(unmatched_detections(ours, expected)) <= 3
