"""Converted torchvision detectors on real photographs, the whole path: `predict_images`
(torchvision's resize rule, a padded batch of two differently sized images, boxes clipped
to each image and scaled back to its pixels) against torchvision's `model([a, b])`.

tests/data/photos/*.png: scikit-image's astronaut (147x131) and coffee (101x152) photographs;
tests/data/torchvision_photos_reference.npz: torchvision's FPN levels (channels 0..31) and
detections on them with the seeded weights (bench/torchvision_photos_reference.py, which
says how to regenerate both), at min_size 160 / max_size 256.
"""

import os

import numpy as np
import pytest

from fpn_keras.convert import from_torchvision
from fpn_keras.convert.fasterrcnn_layout import random_fasterrcnn_state_dict
from fpn_keras.convert.resnet_layout import random_resnet_state_dict
from fpn_keras.convert.retinanet_layout import random_retinanet_state_dict
from fpn_keras.preprocessing import read_image, short_side_batch, short_side_size
from torchvision_helpers import seeded_checkpoint, unmatched_detections

DATA = os.path.join(os.path.dirname(__file__), "data")
SEED = 14  # bench/torchvision_reference.py's
MODELS = {"retinanet_resnet50_fpn": random_retinanet_state_dict,
          "fasterrcnn_resnet50_fpn": random_fasterrcnn_state_dict}


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(os.path.join(DATA, "torchvision_photos_reference.npz")))


@pytest.fixture(scope="module")
def photos(reference):
    return [read_image(os.path.join(DATA, "photos", f"{name}.png")) for name in reference["photos"]]


def _converted(model, reference, directory):
    header = {"weights_sha256": reference[f"{model}/weights_sha256"]}
    state = MODELS[model](random_resnet_state_dict(50, SEED, prefix="backbone.body."), SEED)
    checkpoint = seeded_checkpoint(directory, state, header, f"{model}.pth")
    sizes = (int(reference["min_size"]), int(reference["max_size"]))
    return from_torchvision(model, weights=checkpoint, num_classes=91, transform_sizes=sizes)


def test_short_side_size_by_hand():
    # 147x131: 160 / 131 = 1.2214 < 256 / 147 -> 179.5 x 160 -> floor 179 x 160.
    assert short_side_size(147, 131, 160, 256) == (179, 160)
    # 101x152: 160 / 101 = 1.584; 152 * 1.584 = 240.8 <= 256 -> 160 x 240.
    assert short_side_size(101, 152, 160, 256) == (160, 240)
    # 100x400: the long side caps: 256 / 400 = 0.64 -> 64 x 256.
    assert short_side_size(100, 400, 160, 256) == (64, 256)
    # 480x640 at 800 / 1333: 800 / 480 * 480 is 800.0 in float64 (torchvision's arithmetic).
    assert short_side_size(480, 640, 800, 1333) == (800, 1066)


def test_short_side_batch_pads_to_32_with_the_pad_value():
    images = [np.full((10, 20, 3), 100, np.uint8), np.full((20, 10, 3), 200, np.uint8)]
    batch, sizes, scales, originals = short_side_batch(images, 40, 80, pad_value=(1.0, 2.0, 3.0))
    batch = np.asarray(batch)
    assert batch.shape == (2, 96, 96, 3)  # 40x80 and 80x40 -> 80x80 -> 96x96
    assert sizes.tolist() == [[40, 80], [80, 40]] and scales.tolist() == [[4.0, 4.0], [4.0, 4.0]]
    assert originals.tolist() == [[10, 20], [20, 10]]
    np.testing.assert_allclose(batch[0, :40, :80], 100.0)
    np.testing.assert_allclose(batch[0, 40:, :], np.broadcast_to([1.0, 2.0, 3.0], (56, 96, 3)))
    np.testing.assert_allclose(batch[0, :40, 80:], np.broadcast_to([1.0, 2.0, 3.0], (40, 16, 3)))
    np.testing.assert_allclose(batch[1, :, 40:], np.broadcast_to([1.0, 2.0, 3.0], (96, 56, 3)))


def _matches(ours, theirs, iou=0.99, score_atol=1e-4, px=0.01):
    """Which detections of `theirs` one of `ours` matches (`unmatched_detections`, boxes
    clipped to a line at the image's edge matched within `px`) -> bool [len(theirs)]."""
    found = np.ones(len(theirs["scores"]), bool)
    found[unmatched_detections(ours, theirs, iou, score_atol, px)] = False
    return found


def _explained(scores, unmatched, last_score, threshold, atol=1e-4):
    """An unmatched detection is explained when its score is within atol of the score
    threshold or of the last kept score (the top-D cut), where a 1e-5 difference decides."""
    near = np.abs(scores - threshold) <= atol
    near |= np.abs(scores - last_score) <= atol
    return bool(np.all(near[unmatched]))


@pytest.mark.parametrize("model", list(MODELS))
def test_predict_images_equals_torchvision_on_two_photographs(model, reference, photos, tmp_path):
    detector = _converted(model, reference, tmp_path)
    batch, sizes, _, _ = short_side_batch(photos, *detector.short_side_resize, pad_value=detector.pad_value)
    assert sizes.tolist() == reference[f"{model}/image_sizes"].tolist()
    assert list(batch.shape[1:3]) == reference[f"{model}/batch_shape"].tolist()  # padded to 32

    pyramid = detector.neck(detector.backbone(batch))
    levels = sorted(k for k in reference if k.startswith(f"{model}/P"))
    assert len(levels) == 5
    for key in levels:
        expected = reference[key]
        ours = np.asarray(pyramid[key.rsplit("/", 1)[1]])[..., :expected.shape[-1]]
        error = np.abs(ours - expected).max() / np.abs(expected).max()
        assert error <= 1e-4, f"{key}: relative error {error:.2e}"

    results = detector.predict_images(photos, batch_size=2)
    ids = np.array(detector.category_ids)
    for name, result in zip(reference["photos"], results):
        theirs = {k: reference[f"{model}/{name}/{k}"] for k in ("boxes", "scores", "labels")}
        ours = {"boxes": result["boxes"], "scores": result["scores"], "labels": ids[result["labels"]]}
        assert len(theirs["scores"]) > 50, "the seeded weights must give many confident detections"
        theirs_found, ours_found = _matches(ours, theirs), _matches(theirs, ours)
        assert theirs_found.mean() >= 0.99 and ours_found.mean() >= 0.99, (name, theirs_found.mean(),
                                                                           ours_found.mean())
        threshold = detector.head.score_threshold
        assert _explained(theirs["scores"], ~theirs_found, theirs["scores"].min(), threshold), name
        assert _explained(ours["scores"], ~ours_found, ours["scores"].min(), threshold), name
        height, width = photos[list(reference["photos"]).index(name)].shape[:2]
        assert ours["boxes"][:, [0, 2]].max() <= width and ours["boxes"][:, [1, 3]].max() <= height


def test_the_same_under_keras_backend_jax():
    """tests/converted_jax_check.py: conversion and predict_images with TensorFlow unimportable."""
    import json
    import subprocess
    import sys

    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "converted_jax_check.py")],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
    assert row["backend"] == "jax" and row["tensorflow_loaded"] is False
    assert min(row["theirs_matched"]) >= 0.99 and min(row["ours_matched"]) >= 0.99, row
