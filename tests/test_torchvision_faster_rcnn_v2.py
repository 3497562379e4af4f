"""torchvision fasterrcnn_resnet50_fpn_v2 -> FPNDetector (convert/torchvision_faster_rcnn_v2.py), without torch.

tests/data/torchvision_faster_rcnn_v2_reference.npz (bench/torchvision_faster_rcnn_v2_reference.py):
torchvision's state_dict layout and, on seeded weights, every FPN level, the RPN outputs and
anchors per level, proposals, RoI-head outputs on those proposals and the 100 detections
(~14 classes) on 100x136 and 123x157 canvases (not multiples of 32) and on a 100x136 image
padded to 128x160 as GeneralizedRCNNTransform pads.
"""

import json
import os

import numpy as np
import pytest

from fpn_keras.convert import from_torchvision
from fpn_keras.convert.fasterrcnn_layout import (fasterrcnn_v2_state_dict_shapes, random_fasterrcnn_v2_state_dict,
                                                 roi_summary, rpn_summary)
from fpn_keras.convert.resnet_layout import feature_summary, padded_canvas, random_images, random_resnet_state_dict
from fpn_keras.convert.retinanet_layout import COCO_80_IDS
from fpn_keras.convert.torchvision_faster_rcnn import torchvision_faster_rcnn_detector
from fpn_keras.convert.torchvision_faster_rcnn_v2 import load_torchvision_faster_rcnn_v2
from fpn_keras.models.faster_rcnn import FasterRCNN
from torchvision_helpers import close_up_to_ties, seeded_checkpoint, unmatched_detections

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "torchvision_faster_rcnn_v2_reference.npz")
CASES = {"100x136": ((100, 136), (100, 136)), "123x157": ((123, 157), (123, 157)),
         "100x136_in_128x160": ((100, 136), (128, 160))}  # the bench's: (image size, canvas)
SEED, IMAGE_SEED = 14, 7  # bench/torchvision_reference.py's


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


def _state(seed=SEED):
    return random_fasterrcnn_v2_state_dict(random_resnet_state_dict(50, seed, prefix="backbone.body."), seed)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, reference):
    return seeded_checkpoint(tmp_path_factory.mktemp("torchvision"), _state(), reference, "fasterrcnn_v2.pth")


MAX_PROPOSALS = 700  # torchvision keeps up to 1000; 504-636 survive its NMS on these canvases


@pytest.fixture(scope="module")
def converted(checkpoint):
    detector = from_torchvision("fasterrcnn_resnet50_fpn_v2", weights=checkpoint, image_size=(128, 160))
    # The same proposals (every one that survives), and the 4-conv box head runs on 700 RoIs, not 1000.
    detector.head.rpn.post_nms_topk_test = MAX_PROPOSALS
    return detector


def test_every_torchvision_key_has_a_place(reference, converted):
    shapes = json.loads(str(reference["state_dict_shapes"]))
    assert {k: tuple(v) for k, v in shapes.items()} == fasterrcnn_v2_state_dict_shapes(91)
    state = _state(seed=0)
    used = load_torchvision_faster_rcnn_v2(converted, state)  # the module's fixture reloads its own below
    assert len(used) == len([k for k in state if not k.endswith("num_batches_tracked")])
    neck, box_head = converted.neck, converted.head.roi_heads.box_head
    np.testing.assert_array_equal(np.asarray(neck.output_norms["P3"].moving_variance),
                                  state["backbone.fpn.layer_blocks.1.1.running_var"])
    assert not neck.lateral["C2"].use_bias and neck.lateral_norms["C2"].epsilon == 1e-5
    np.testing.assert_array_equal(np.asarray(converted.head.rpn.head.more_convs[0].bias),
                                  state["rpn.head.conv.1.0.bias"])
    np.testing.assert_array_equal(np.asarray(box_head.norms[3].gamma), state["roi_heads.box_head.3.1.weight"])
    kernel = np.asarray(box_head.fcs[0].kernel)  # [(y, x, c), 1024]
    np.testing.assert_array_equal(kernel[1], state["roi_heads.box_head.5.weight"][:, 49])  # c 1, y 0, x 0
    v1 = torchvision_faster_rcnn_detector(image_size=(64, 64))  # unbuilt: the layout check comes first
    with pytest.raises(ValueError, match=r"neck norm None \(torchvision: 'batch'\).*RPN conv depth 1"):
        load_torchvision_faster_rcnn_v2(v1, state)
    load_torchvision_faster_rcnn_v2(converted, _state())  # back to the reference's weights


def _reference(reference, name, group):
    prefix = f"{name}/{group}/"
    return {k[len(prefix):]: v for k, v in reference.items() if k.startswith(prefix)}


def _relative_errors(ours, expected, fields):
    """{field: max |ours - torchvision| / std} with std from `expected["stds"]` (index, scale)."""
    return {field: np.abs(ours[field] - expected[field]).max() / (expected["stds"][index] * scale)
            for field, (index, scale) in fields.items()}


@pytest.mark.parametrize("case", CASES)
def test_pyramid_rpn_roi_heads_and_detections_equal_torchvision(converted, reference, case):
    image_size, canvas = CASES[case]
    images = padded_canvas(random_images(*image_size, IMAGE_SEED), *canvas)
    pyramid = converted.neck(converted.backbone(images))
    raw = converted.head(pyramid, image_shape=canvas)
    errors = {}
    for level in range(2, 7):  # FPN level, RPN outputs and anchors, level by level
        expected = _reference(reference, case, f"P{level}")
        feature = feature_summary(np.asarray(pyramid[f"P{level}"][0]))
        std = expected["feature_stats"][1]
        for field, factor in (("pixels", 1.0), ("channel_sum", 16.0)):  # a sum of 256: 16 x the std
            errors[(f"P{level}", field)] = np.abs(feature[field] - expected[f"feature_{field}"]).max() / (std * factor)
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
    expected = _reference(reference, case, "proposals")
    count = len(expected["scores"])
    _, logits, valid = converted.head.rpn.propose(raw["rpn"], canvas)
    assert int(np.sum(valid[0])) == count < MAX_PROPOSALS
    scores = 1.0 / (1.0 + np.exp(-np.asarray(logits[0][:count], np.float64)))
    close_up_to_ties(np.asarray(raw["proposals"][0][:count]), expected["boxes"], expected["scores"], atol=1e-3)
    assert np.abs(scores - expected["scores"]).max() < 1e-5
    # RoI heads on torchvision's own proposals (in our class order).
    cls, box = converted.head.roi_heads(raw["features"], expected["boxes"][None])
    ours = roi_summary(np.asarray(cls[0]), np.asarray(box[0]), rows=(0, count // 2, count - 1))
    sums = {"cls_sum": (0, np.sqrt(np.sum((1.0 + np.arange(81) % 7) ** 2))), "cls_rows": (0, 1.0),
            "box_sum": (1, np.sqrt(30.0 * np.sum((1.0 + np.arange(80) % 7) ** 2))), "box_rows": (1, 1.0)}
    errors.update({("RoI", k): v for k, v in _relative_errors(ours, _reference(reference, case, "roi"), sums).items()})
    assert max(errors.values()) < 1e-4, {k: f"{v:.1e}" for k, v in errors.items() if v >= 1e-4}
    # Detections: matched one to one (same label, IoU >= 0.99, score within 1e-4).
    detections = {k: np.asarray(v[0]) for k, v in converted.head.detect(raw, canvas).items()}
    expected = _reference(reference, case, "detections")
    count = int(detections["num_detections"])
    assert count == len(expected["scores"]) == 100
    ours = {"boxes": detections["boxes"][:count], "scores": detections["scores"][:count],
            "labels": np.array(converted.category_ids)[detections["labels"][:count]]}
    unmatched = unmatched_detections(ours, expected)
    print(f"{case}: max relative error {max(errors.values()):.1e} ({max(errors, key=errors.get)}), "
          f"{count - len(unmatched)} / {count} detections matched, boxes within "
          f"{np.abs(ours['boxes'] - expected['boxes']).max():.1e} px in order")  # pytest -s
    assert unmatched == []


def test_config_round_trips_with_the_v2_options(converted):
    head = FasterRCNN.from_config(converted.head.get_config())
    box_head = head.roi_heads.box_head
    assert (box_head.num_conv, box_head.conv_dim, box_head.norm, box_head.num_fc) == (4, 256, "batch", 1)
    assert box_head.norms[0].epsilon == 1e-5 and not box_head.convs[0].use_bias
    assert head.rpn.head.conv_depth == 2 and len(head.rpn.head.more_convs) == 1
    assert converted.neck.get_config()["norm"] == "batch" and converted.neck.norm_epsilon == 1e-5
    assert converted.category_ids == list(COCO_80_IDS)


def test_convert_command_writes_the_converted_model(checkpoint, converted, tmp_path):
    from fpn_keras import cli
    from fpn_keras.commands import load_keras_model

    out = str(tmp_path / "fasterrcnn_v2.keras")
    assert cli.main(["convert", "--from", "torchvision:fasterrcnn_resnet50_fpn_v2", "--weights", checkpoint,
                     "--out", out, "--image-size", "128", "160"]) == 0
    model = load_keras_model(out)
    assert model.head.rpn.head.conv_depth == 2 and model.neck.norm == "batch"
    assert model.head.rpn.post_nms_topk_test == 1000  # torchvision's (the fixture's is lowered)
    assert [l.epsilon for l in model.backbone.layers if hasattr(l, "epsilon")][0] == 1e-5
    # the weights proven above (the detections follow from them and the configuration)
    assert len(model.weights) == len(converted.weights)
    for ours, proven in zip(model.weights, converted.weights):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(proven), err_msg=ours.path)
