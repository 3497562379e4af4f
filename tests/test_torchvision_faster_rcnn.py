"""torchvision fasterrcnn_resnet50_fpn -> FPNDetector (convert/torchvision_faster_rcnn.py), without torch.

tests/data/torchvision_faster_rcnn_reference.npz (bench/torchvision_faster_rcnn_reference.py):
torchvision's state_dict layout, and on seeded weights at 128x128 and 160x224 its RPN outputs
and anchors per level, proposals, RoI-head outputs on those proposals and detections (at its
own threshold 0.05: the weights give 100 detections of 10-13 classes on both canvases).
"""

import json
import os

import numpy as np
import pytest

from fpn_keras.convert import from_torchvision, load_torchvision_faster_rcnn
from fpn_keras.convert.fasterrcnn_layout import (class_ids, fasterrcnn_state_dict_shapes, fc6_in_our_order,
                                                 predictor_in_our_order, random_fasterrcnn_state_dict,
                                                 roi_summary, rpn_summary)
from fpn_keras.convert.resnet_layout import random_images, random_resnet_state_dict
from fpn_keras.convert.retinanet_layout import COCO_80_IDS
from fpn_keras.models.faster_rcnn import FasterRCNN
from torchvision_helpers import close_up_to_ties, seeded_checkpoint

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "torchvision_faster_rcnn_reference.npz")
SIZES = ((128, 128), (160, 224))
SEED, IMAGE_SEED = 14, 7  # bench/torchvision_reference.py's


def test_predictor_rows_by_hand():
    # torchvision: row 0 background, rows 1..3 ids 1..3; ours (ids 2, 3): 2, 3, background.
    bias = np.array([0.0, 10.0, 20.0, 30.0], np.float32)
    assert predictor_in_our_order(bias, 1, (2, 3)).tolist() == [20.0, 30.0, 0.0]
    deltas = np.arange(16, dtype=np.float32)  # id k's (dx, dy, dw, dh) at 4k..4k+3
    assert predictor_in_our_order(deltas, 4, (2, 3)).tolist() == [8, 9, 10, 11, 12, 13, 14, 15]
    assert class_ids(80) == COCO_80_IDS and class_ids(91) == tuple(range(1, 91))


def test_fc6_permutation_on_a_tiny_example():
    # 2 channels, 2x2 RoI: torchvision flattens (c, y, x), ours (y, x, c).
    pooled = np.arange(8, dtype=np.float32).reshape(2, 2, 2)  # [C, S, S]
    weight = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    ours = fc6_in_our_order(weight, channels=2, size=2)
    np.testing.assert_allclose(ours @ pooled.transpose(1, 2, 0).reshape(-1), weight @ pooled.reshape(-1), rtol=1e-6)
    assert ours[0, 1] == weight[0, 4]  # ours (y 0, x 0, c 1) is torchvision's (c 1, y 0, x 0)


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


def test_every_torchvision_key_has_a_place(reference):
    shapes = json.loads(str(reference["state_dict_shapes"]))
    assert {k: tuple(v) for k, v in shapes.items()} == fasterrcnn_state_dict_shapes(91)
    state = random_fasterrcnn_state_dict(random_resnet_state_dict(50, prefix="backbone.body."))
    detector = from_torchvision("fasterrcnn_resnet50_fpn", image_size=(128, 128))
    used = load_torchvision_faster_rcnn(detector, state)
    assert len(used) == len([k for k in state if not k.endswith("num_batches_tracked")])
    box_head = detector.head.roi_heads.box_head
    bias = state["roi_heads.box_predictor.cls_score.bias"]
    np.testing.assert_array_equal(np.asarray(box_head.cls_score.bias), bias[list(COCO_80_IDS) + [0]])
    kernel = np.asarray(box_head.fcs[0].kernel)  # [(y, x, c), 1024]
    np.testing.assert_array_equal(kernel[1], state["roi_heads.box_head.fc6.weight"][:, 49])  # c 1, y 0, x 0
    np.testing.assert_array_equal(np.asarray(detector.head.rpn.head.deltas.kernel)[0, 0],
                                  state["rpn.head.bbox_pred.weight"][:, :, 0, 0].T)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, reference):
    state = random_fasterrcnn_state_dict(random_resnet_state_dict(50, SEED, prefix="backbone.body."), SEED)
    return seeded_checkpoint(tmp_path_factory.mktemp("torchvision"), state, reference, "fasterrcnn.pth")


@pytest.fixture(scope="module")
def converted(checkpoint):
    return from_torchvision("fasterrcnn_resnet50_fpn", weights=checkpoint, image_size=(160, 224))


def _relative_errors(ours, expected, fields):
    """{field: max |ours - torchvision| / std} with std from `expected["stds"]` (index, scale)."""
    return {field: np.abs(ours[field] - expected[field]).max() / (expected["stds"][index] * scale)
            for field, (index, scale) in fields.items()}


def _reference(reference, name, group):
    prefix = f"{name}/{group}/"
    return {k[len(prefix):]: v for k, v in reference.items() if k.startswith(prefix)}


ERRORS = {}  # measured here, printed by the last test (pytest -s)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_rpn_proposals_roi_heads_and_detections_equal_torchvision(converted, reference, size):
    name = f"{size[0]}x{size[1]}"
    images = random_images(*size, IMAGE_SEED)
    raw = converted(images)
    errors = {}
    for level in range(2, 7):  # RPN outputs and anchors, level by level
        expected = _reference(reference, name, f"P{level}")
        ours = rpn_summary(np.asarray(raw["rpn"]["objectness"][f"P{level}"][0]),
                           np.asarray(raw["rpn"]["deltas"][f"P{level}"][0]))
        errors.update({(f"P{level}", k): v for k, v in _relative_errors(
            ours, expected, {"objectness": (0, 1.0), "box_sum": (1, np.sqrt(30.0))}).items()})
        anchors = np.asarray(raw["rpn"]["anchors"][f"P{level}"])
        assert anchors.shape[0] == 3 * np.prod(expected["grid"])
        locations = anchors.shape[0] // 3
        rows = [3 * i + a for i in (0, locations // 2, locations - 1) for a in range(3)]
        np.testing.assert_allclose(anchors[rows], expected["anchor_rows"], atol=1e-4)
    # Proposals: the same number, boxes and objectness probabilities in the same order (ties excepted).
    expected = _reference(reference, name, "proposals")
    count = len(expected["scores"])
    _, logits, valid = converted.head.rpn.propose(raw["rpn"], size)
    assert int(np.sum(valid[0])) == count
    scores = 1.0 / (1.0 + np.exp(-np.asarray(logits[0][:count], np.float64)))
    proposals = np.asarray(raw["proposals"][0][:count])
    close_up_to_ties(proposals, expected["boxes"], expected["scores"], atol=1e-3)
    errors["proposal boxes px"] = np.abs(proposals - expected["boxes"]).max()
    errors["proposal scores"] = np.abs(scores - expected["scores"]).max()
    assert errors["proposal scores"] < 1e-5
    # RoI heads on torchvision's own proposals (in our class order).
    cls, box = converted.head.roi_heads(raw["features"], expected["boxes"][None])
    ours = roi_summary(np.asarray(cls[0]), np.asarray(box[0]), rows=(0, count // 2, count - 1))
    sums = {"cls_sum": (0, np.sqrt(np.sum((1.0 + np.arange(81) % 7) ** 2))), "cls_rows": (0, 1.0),
            "box_sum": (1, np.sqrt(30.0 * np.sum((1.0 + np.arange(80) % 7) ** 2))), "box_rows": (1, 1.0)}
    errors.update({("RoI", k): v for k, v in _relative_errors(ours, _reference(reference, name, "roi"), sums).items()})
    # Detections: torchvision's labels in order, boxes, scores.
    detections = {k: np.asarray(v[0]) for k, v in converted.detect(images).items()}
    expected = _reference(reference, name, "detections")
    count = len(expected["scores"])
    assert int(detections["num_detections"]) == count == 100
    ids = np.array(converted.category_ids)[detections["labels"][:count]]
    close_up_to_ties(ids, expected["labels"], expected["scores"], atol=0)
    close_up_to_ties(detections["boxes"][:count], expected["boxes"], expected["scores"], atol=1e-3)
    errors["detection boxes px"] = np.abs(detections["boxes"][:count] - expected["boxes"]).max()
    errors["detection scores"] = np.abs(detections["scores"][:count] - expected["scores"]).max()
    assert errors["detection scores"] < 1e-5
    relative = {k: v for k, v in errors.items() if isinstance(k, tuple)}
    assert max(relative.values()) < 1e-4, {k: f"{v:.1e}" for k, v in relative.items() if v >= 1e-4}
    ERRORS[name] = errors


def test_91_outputs_give_the_same_detections(checkpoint, reference):
    detector = from_torchvision("fasterrcnn_resnet50_fpn", weights=checkpoint, num_classes=91,
                                image_size=(128, 128))
    assert detector.num_classes == 90 and detector.category_ids == list(range(1, 91))
    assert detector.class_names[11] == "N/A" and detector.class_names[12] == "stop sign"
    detections = {k: np.asarray(v[0]) for k, v in detector.detect(random_images(128, 128, IMAGE_SEED)).items()}
    expected = _reference(reference, "128x128", "detections")
    ids = np.array(detector.category_ids)[detections["labels"][:100]]
    close_up_to_ties(ids, expected["labels"], expected["scores"], atol=0)
    np.testing.assert_allclose(detections["scores"][:100], expected["scores"], atol=1e-5)


def test_converted_config_round_trips(converted):
    head = FasterRCNN.from_config(converted.head.get_config())
    assert head.roi_heads.aligned is False and head.roi_heads.level_epsilon == 1e-6
    assert head.min_box_size == 1e-2 and head.pre_nms_topk == 80 * 1000 and head.max_detections == 100
    assert head.rpn.min_size == 1e-3 and head.rpn.anchor_generator.strides == "image_over_grid"
    assert converted.neck.extra_levels_type == "max_pool"
    assert converted.category_ids == list(COCO_80_IDS)


def test_convert_command_writes_a_model_that_detects_the_same(checkpoint, reference, tmp_path):
    from fpn_keras import cli
    from fpn_keras.commands import load_keras_model

    out = str(tmp_path / "fasterrcnn.keras")
    assert cli.main(["convert", "--from", "torchvision:fasterrcnn_resnet50_fpn", "--weights", checkpoint,
                     "--out", out, "--image-size", "128", "128"]) == 0
    model = load_keras_model(out)
    assert model.image_size == (128, 128) and model.head.roi_heads.aligned is False
    detections = model.detect(random_images(128, 128, IMAGE_SEED))
    expected = _reference(reference, "128x128", "detections")
    boxes = np.asarray(detections["boxes"][0])[:100]
    close_up_to_ties(boxes, expected["boxes"], expected["scores"], atol=1e-3)


def test_wrong_layout_is_named():
    from fpn_keras.convert.torchvision_faster_rcnn import torchvision_faster_rcnn_detector

    detector = torchvision_faster_rcnn_detector(image_size=(64, 64))
    detector.neck.extra_levels_type = "conv"
    with pytest.raises(ValueError, match=r"P6 'conv' \(torchvision: 'max_pool'\)"):
        load_torchvision_faster_rcnn(detector, {})


def test_print_measured_errors():
    for name, errors in ERRORS.items():
        print(name, {k if isinstance(k, str) else "/".join(k): f"{v:.1e}" for k, v in errors.items()})
