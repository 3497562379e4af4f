"""detectron2 COCO R50-FPN 1x checkpoints -> FPNDetector (convert/detectron2.py), without torch.

tests/data/detectron2_reference.npz (bench/detectron2_reference.py, detectron2 itself): on
seeded weights (`detectron2_layout.random_state_dict`, loaded there by detectron2's
DetectionCheckpointer from a model-zoo style .pkl) and two photographs resized to 147 x 150 and
133 x 200, zero-padded to 160 x 160 and 160 x 224, every FPN level, Faster R-CNN's proposals
and both models' detections. Here the same weights go through a .pkl into `from_detectron2`.
"""

import json
import os
import pickle

import numpy as np
import pytest

from fpn_keras.convert import CheckpointError, from_detectron2, read_detectron2_weights, save_torch_checkpoint
from fpn_keras.convert.detectron2 import detectron2_detector
from fpn_keras.convert.detectron2_layout import (CONFIGS, RETINANET_ANCHOR_SIZES, fc1_in_our_order,
                                                 random_state_dict, resnet_module)
from fpn_keras.convert.resnet_layout import block_convs, state_dict_sha256
from fpn_keras.convert.retinanet_layout import COCO_80_IDS
from fpn_keras.models.torchvision_resnet import TorchvisionNormalization
from torchvision_helpers import unmatched_detections

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "detectron2_reference.npz")
SEED = 14  # bench/detectron2_reference.py's


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_a_command_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": {"w": np.zeros(2, np.float32), "x": _RunsACommand(marker)}}, handle)
    with pytest.raises(CheckpointError, match=r"refusing to load '(posix|os|nt)\.system'"):
        read_detectron2_weights(path)
    assert not marker.exists()


def test_object_arrays_and_other_globals_are_refused(tmp_path):
    path = tmp_path / "objects.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": {"w": np.array([1, "a"], dtype=object)}}, handle)
    with pytest.raises(CheckpointError, match="dtype object"):
        read_detectron2_weights(path)
    with open(path, "wb") as handle:
        pickle.dump({"model": {"w": np.zeros(2)}, "when": __import__("datetime").date(2020, 1, 1)}, handle)
    with pytest.raises(CheckpointError, match="datetime.date"):
        read_detectron2_weights(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_model_zoo_pickles_of_every_protocol(tmp_path, protocol):
    weights = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a.bias": np.float64(0.5),
               "b": np.zeros((0,), np.int64), "c": np.asfortranarray(np.arange(6.0).reshape(2, 3))}
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True},
                    handle, protocol=protocol)
    read = read_detectron2_weights(path)
    assert sorted(read) == sorted(weights)
    for key, value in weights.items():
        assert read[key].dtype == np.asarray(value).dtype and np.array_equal(read[key], value)


def test_pth_and_npz_checkpoints(tmp_path):
    weights = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    save_torch_checkpoint(str(tmp_path / "w.pth"), weights)
    np.savez(tmp_path / "w.npz", **weights)
    for name in ("w.pth", "w.npz"):
        assert np.array_equal(read_detectron2_weights(tmp_path / name)["a.weight"], weights["a.weight"])
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        (tmp_path / "w.bin").write_bytes(b"")
        read_detectron2_weights(tmp_path / "w.bin")


def test_resnet_names_by_hand():
    assert resnet_module("conv1") == "stem.conv1" and resnet_module("bn1") == "stem.conv1.norm"
    assert resnet_module("layer1.0.conv2") == "res2.0.conv2"
    assert resnet_module("layer3.5.bn3") == "res4.5.conv3.norm"
    assert resnet_module("layer4.0.downsample.0") == "res5.0.shortcut"
    assert resnet_module("layer2.0.downsample.1") == "res3.0.shortcut.norm"


def test_stride_in_1x1_moves_the_stride_to_the_first_conv():
    # (name, in, out, kernel, stride): detectron2's MSRA R-50 strides its 1x1, torchvision its 3x3.
    assert [c[4] for c in block_convs("bottleneck", 256, 128, 512, 2, stride_in_1x1=True)] == [2, 1, 1]
    assert [c[4] for c in block_convs("bottleneck", 256, 128, 512, 2)] == [1, 2, 1]


def test_bgr_normalization_by_hand():
    layer = TorchvisionNormalization((103.53, 116.28, 123.675), (1.0, 1.0, 1.0), scale=1.0, channel_order="bgr")
    out = np.asarray(layer(np.array([[[10.0, 20.0, 30.0]]], np.float32)))
    np.testing.assert_allclose(out[0, 0], [30 - 103.53, 20 - 116.28, 10 - 123.675], rtol=1e-6)
    assert TorchvisionNormalization.from_config(layer.get_config()).channel_order == "bgr"


def test_fc1_permutation_on_a_tiny_example():
    pooled = np.arange(8, dtype=np.float32).reshape(2, 2, 2)  # [C, S, S]
    weight = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    ours = fc1_in_our_order(weight, channels=2, size=2)
    np.testing.assert_allclose(ours @ pooled.transpose(1, 2, 0).reshape(-1), weight @ pooled.reshape(-1), rtol=1e-6)


def test_detectron2_conventions_reach_the_modules():
    # Each value as read in detectron2's config/defaults.py and configs/Base-*.yaml.
    retinanet = detectron2_detector("retinanet_R_50_FPN_1x")
    head, neck = retinanet.head, retinanet.neck
    anchors = head.anchor_generator
    assert anchors.offset == 0.0 and not anchors.round_cells and anchors.strides == "level"
    np.testing.assert_allclose(anchors.sizes[0], (32.0, 40.3174736, 50.7968377))
    assert anchors.sizes == tuple(tuple(float(v) for v in level) for level in RETINANET_ANCHOR_SIZES)
    assert (head.score_threshold, head.nms_iou_threshold, head.max_detections, head.pre_nms_topk) == (0.05, 0.5, 100, 1000)
    assert not head.clip_before_nms and tuple(head.box_coder.weights) == (1.0, 1.0, 1.0, 1.0)
    assert (neck.extra_levels_source, neck.conv_padding) == ("C5", "symmetric")
    faster = detectron2_detector("COCO-Detection/faster_rcnn_R_50_FPN_1x")
    rpn, roi = faster.head.rpn, faster.head.roi_heads
    assert rpn.anchor_generator.offset == 0.0 and rpn.anchor_generator.sizes is None
    assert (rpn.pre_nms_topk_test, rpn.post_nms_topk_test, rpn.nms_threshold, rpn.min_size) == (1000, 1000, 0.7, 0.0)
    assert (roi.aligned, roi.sampling_ratio, roi.level_epsilon, roi.pooled_size) == (True, 0, None, 7)
    assert tuple(faster.head.box_coder.weights) == (10.0, 10.0, 5.0, 5.0)
    assert (faster.head.score_threshold, faster.head.nms_iou_threshold, faster.head.max_detections) == (0.05, 0.5, 100)
    assert faster.neck.extra_levels_type == "max_pool"
    for detector in (retinanet, faster):
        assert list(detector.category_ids) == list(COCO_80_IDS) and detector.class_names[0] == "person"
    with pytest.raises(ValueError, match="unknown detectron2 config"):
        detectron2_detector("mask_rcnn_R_50_FPN_1x")


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


@pytest.fixture(scope="module")
def detectors(reference, tmp_path_factory):
    """{short config name: FPNDetector} read from model-zoo style .pkl files of the seeded weights."""
    out = {}
    for config in CONFIGS:
        short = config.split("/")[1]
        state = random_state_dict(config, SEED)
        assert state_dict_sha256(state) == str(reference[f"{short}/weights_sha256"])
        path = tmp_path_factory.mktemp(short) / "model_final.pkl"
        with open(path, "wb") as handle:
            pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, handle)
        out[short] = from_detectron2(config, path, image_size=(160, 224))  # max_sampling_ratio 8
    return out


def _images(reference):
    return list(json.loads(str(reference["images"])))


def _canvas(reference, name):
    return reference[f"{name}/canvas"][None].astype(np.float32)


def test_a_misshapen_or_unused_checkpoint_key_is_named(tmp_path):
    # (The `detectors` fixture loading at all shows every key is used: all or nothing.)
    for change, message in ((lambda state: state.update(
            {"head.cls_score.bias": state["head.cls_score.bias"][:9]}), r"head\.cls_score\.bias \(9,\)"),
            (lambda state: state.update({"head.extra.weight": np.zeros(1, np.float32)}),
             r"checkpoint keys not used \(1\): head\.extra\.weight")):
        state = random_state_dict(CONFIGS[1], SEED)
        change(state)
        path = tmp_path / "bad.pkl"
        with open(path, "wb") as handle:
            pickle.dump({"model": state}, handle)
        with pytest.raises(ValueError, match=message):
            from_detectron2(CONFIGS[1], path, image_size=(64, 64))


@pytest.mark.parametrize("config", [c.split("/")[1] for c in CONFIGS])
def test_every_fpn_level_equals_detectron2s(reference, detectors, config):
    detector = detectors[config]
    for name in _images(reference):
        pyramid = detector.neck(detector.backbone(_canvas(reference, name)))
        for level in range(detector.neck.min_level, detector.neck.max_level + 1):
            prefix = f"{config}/{name}/p{level}"
            ours = np.asarray(pyramid[f"P{level}"])[0]
            assert ours.shape == tuple(reference[f"{prefix}/shape"])
            pixels = ours.reshape(-1, ours.shape[-1])[reference[f"{prefix}/rows"]]
            scale = np.abs(reference[f"{prefix}/pixels"]).max()
            # within 1e-4 of the level's largest value (relative), at every kept pixel and channel
            error = np.abs(pixels - reference[f"{prefix}/pixels"]).max() / scale
            print(f"{prefix}: max relative difference {error:.1e}")  # pytest -s
            assert error <= 1e-4, prefix
            sums = ours.sum(-1, dtype=np.float64)
            assert np.abs(sums - reference[f"{prefix}/channel_sum"]).max() <= 1e-4 * np.abs(
                reference[f"{prefix}/channel_sum"]).max(), prefix


def _unmatched(ours, theirs):
    """`unmatched_detections` of (boxes, scores, labels) tuples."""
    keys = ("boxes", "scores", "labels")
    return unmatched_detections(dict(zip(keys, ours)), dict(zip(keys, theirs)))


@pytest.mark.parametrize("config", [c.split("/")[1] for c in CONFIGS])
def test_detections_equal_detectron2s(reference, detectors, config):
    detector = detectors[config]
    for name in _images(reference):
        out = {k: np.asarray(v)[0] for k, v in detector.detect(_canvas(reference, name)).items()}
        count = int(out["num_detections"])
        ours = (out["boxes"][:count], out["scores"][:count], out["labels"][:count])
        prefix = f"{config}/{name}/detections"
        theirs = tuple(reference[f"{prefix}/{key}"] for key in ("boxes", "scores", "labels"))
        assert len(theirs[1]) > 10 and count == len(theirs[1])
        unmatched = _unmatched(ours, theirs)
        print(f"{config} {name}: {len(theirs[1]) - len(unmatched)} / {len(theirs[1])} detections matched")  # -s
        assert len(unmatched) <= 0.01 * len(theirs[1]), (name, unmatched)
        for i in unmatched:  # only a tie at the last place, or a score at the threshold
            score = theirs[1][i]
            assert abs(score - theirs[1].min()) <= 1e-4 or abs(score - 0.05) <= 1e-4, (name, i, score)


def test_faster_rcnn_proposals_equal_detectron2s(reference, detectors):
    detector = detectors["faster_rcnn_R_50_FPN_1x"]
    for name in _images(reference):
        raw = detector(_canvas(reference, name))
        valid = np.asarray(raw["valid"])[0]
        proposals = np.asarray(raw["proposals"])[0][valid]
        expected = reference[f"faster_rcnn_R_50_FPN_1x/{name}/proposals"]
        assert len(proposals) == len(expected)
        np.testing.assert_allclose(proposals, expected, atol=1e-3)
        assert int(reference[f"faster_rcnn_R_50_FPN_1x/{name}/adaptive_grid"]) <= 8  # within max_sampling_ratio


def test_convert_command_writes_a_model_that_loads_and_detects_the_same(reference, tmp_path, capsys):
    from fpn_keras import cli
    from fpn_keras.commands import load_keras_model

    state = random_state_dict(CONFIGS[1], SEED)
    checkpoint = str(tmp_path / "model_final.pkl")
    with open(checkpoint, "wb") as handle:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, handle)
    out = str(tmp_path / "retinanet.keras")
    assert cli.main(["convert", "--from", "detectron2:retinanet_R_50_FPN_1x", "--weights", checkpoint,
                     "--out", out, "--image-size", "160", "160"]) == 0
    model = load_keras_model(out)
    assert model.image_size == (160, 160) and model.category_ids == list(COCO_80_IDS)
    assert model.backbone.get_layer("preprocessing").channel_order == "bgr" and not model.head.clip_before_nms
    detections = model.detect(_canvas(reference, "astronaut"))
    count = int(detections["num_detections"][0])
    theirs = tuple(reference[f"retinanet_R_50_FPN_1x/astronaut/detections/{k}"] for k in ("boxes", "scores", "labels"))
    ours = tuple(np.asarray(detections[k][0])[:count] for k in ("boxes", "scores", "labels"))
    assert count == len(theirs[1]) and not _unmatched(ours, theirs)
    assert cli.main(["convert", "--from", "detectron2:mask_rcnn_R_50_FPN_1x", "--weights", checkpoint,
                     "--out", out]) == 2
    assert "unknown detectron2 config" in capsys.readouterr().err
