"""torchvision-layout ResNet (models/torchvision_resnet.py), FrozenBatchNorm and the
converter, checked against torchvision's own outputs without torch.

tests/data/torchvision_resnet_reference.npz holds torchvision's C2..C5 summaries
(resnet_layout.feature_summary) for the seeded weights and images of
bench/torchvision_reference.py, which wrote it (torch + torchvision there).
"""

import os

import keras
import numpy as np
import pytest

from fpn_keras.convert import ConversionError, load_torchvision_resnet, save_torch_checkpoint
from fpn_keras.convert.resnet_layout import (feature_summary, random_images, random_resnet_state_dict,
                                             state_dict_sha256)
from fpn_keras.layers.frozen_batchnorm import FrozenBatchNorm
from fpn_keras.models.torchvision_resnet import TorchvisionNormalization, torchvision_resnet

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "torchvision_resnet_reference.npz")
SIZES = ((96, 128), (97, 131))


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


@pytest.fixture(scope="module")
def resnet18():
    return torchvision_resnet(18)


def test_frozen_batchnorm_by_hand():
    layer = FrozenBatchNorm(name="bn")
    layer.build((None, 2))
    # var + eps = 4 and 0.25: scale = gamma / 2, gamma / 0.5; shift = beta - mean * scale.
    layer.set_weights([np.array([2.0, 0.5]), np.array([1.0, -1.0]), np.array([3.0, -2.0]),
                       np.array([4.0 - 1e-5, 0.25 - 1e-5])])
    y = np.asarray(layer(np.array([[5.0, 0.0], [3.0, -2.0]], np.float32)))
    # ch0: (5 - 3) / 2 * 2 + 1 = 3, (3 - 3) -> 1;  ch1: (0 + 2) / 0.5 * 0.5 - 1 = 1, (-2 + 2) -> -1
    np.testing.assert_allclose(y, [[3.0, 1.0], [1.0, -1.0]], rtol=1e-6)
    assert [w.name for w in layer.weights] == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert not layer.trainable_weights
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, FrozenBatchNorm) and clone.epsilon == 1e-5
    assert keras.saving.get_registered_name(FrozenBatchNorm) == "fpn_keras>FrozenBatchNorm"


def test_normalisation_is_torchvision_transform():
    layer = TorchvisionNormalization()
    y = np.asarray(layer(np.array([[[0.0, 127.5, 255.0]]], np.float32)))
    expected = (np.array([0.0, 0.5, 1.0]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-6)


def _torch_parameter_count(model):
    """Conv weights + BN gamma / beta: torchvision's named_parameters() without fc."""
    return sum(int(np.prod(w.shape)) for w in model.weights
               if w.name not in ("moving_mean", "moving_variance"))


def test_parameter_counts_and_freezing(resnet18):
    # torchvision: sum(p.numel() for n, p in resnet18().named_parameters() if not n.startswith("fc."))
    assert _torch_parameter_count(resnet18) == 11_176_512
    batchnorm = torchvision_resnet(18, norm="batchnorm", trainable_layers=5)
    assert sum(int(np.prod(w.shape)) for w in batchnorm.trainable_weights) == 11_176_512
    frozen = torchvision_resnet(18, norm="batchnorm", trainable_layers=3)
    trainable = {l.name for l in frozen.layers if l.weights and l.trainable}
    assert "layer2.0.conv1" in trainable and "layer4.1.bn2" in trainable
    assert not trainable & {"conv1", "bn1", "layer1.0.conv1", "layer1.1.bn2"}
    with pytest.raises(ValueError, match="trainable_layers must be in 0..5"):
        torchvision_resnet(18, trainable_layers=6)


def _relative_errors(features, reference, name):
    """Max |Keras - torchvision| over each summary, over the level's feature std."""
    errors = {}
    for level, feature in features.items():
        scale = reference[f"{name}/{level}/stats"][1]
        got = feature_summary(np.asarray(feature)[0])
        for field in ("pixels", "channel_sum"):
            ref = reference[f"{name}/{level}/{field}"]
            assert got[field].shape == ref.shape, (name, level, field)
            norm = scale * (np.sqrt(feature.shape[-1]) if field == "channel_sum" else 1.0)
            errors[f"{level}/{field}"] = float(np.abs(got[field] - ref).max() / norm)
        errors[f"{level}/stats"] = float(np.abs(got["stats"] / reference[f"{name}/{level}/stats"] - 1).max())
    return errors


def _check_against_torchvision(model, depth, reference):
    for height, width in SIZES:
        name = f"resnet{depth}/{height}x{width}"
        errors = _relative_errors(model(random_images(height, width, int(reference["image_seed"]))),
                                  reference, name)
        worst = max(errors, key=errors.get)
        assert errors[worst] < 1e-4, f"{name}: {worst} off by {errors[worst]:.2e} of the feature std"


def test_resnet18_matches_torchvision(resnet18, reference):
    state = random_resnet_state_dict(18, int(reference["seed"]))
    assert state_dict_sha256(state) == reference["resnet18/weights_sha256"]  # same weights as torch saw
    load_torchvision_resnet(resnet18, state, prefix="")  # a classification checkpoint: fc.* unused
    _check_against_torchvision(resnet18, 18, reference)


def test_resnet50_from_a_detection_checkpoint_matches_torchvision(tmp_path, reference):
    state = random_resnet_state_dict(50, int(reference["seed"]), prefix="backbone.body.")
    unprefixed = {k[len("backbone.body."):]: v for k, v in state.items()}
    assert state_dict_sha256(unprefixed) == reference["resnet50/weights_sha256"]
    state["backbone.fpn.layer_blocks.0.0.weight"] = np.zeros((256, 256, 3, 3), np.float32)  # not ours
    del state["backbone.body.fc.weight"], state["backbone.body.fc.bias"]
    path = tmp_path / "retinanet_like.pth"
    save_torch_checkpoint(path, state)
    model = torchvision_resnet(50, weights=str(path))  # read without torch, prefix detected
    assert _torch_parameter_count(model) == 23_508_032  # torchvision resnet50 without fc
    trainable = {l.name for l in model.layers if l.trainable_weights}
    assert "layer2.0.conv2" in trainable and "layer1.0.conv2" not in trainable  # 3 stages by default
    _check_against_torchvision(model, 50, reference)


def test_conversion_lists_missing_unused_and_misshapen_keys(resnet18):
    before = resnet18.get_layer("conv1").get_weights()[0].copy()
    state = random_resnet_state_dict(18, seed=1, prefix="backbone.body.")
    del state["backbone.body.layer3.1.bn2.running_var"]
    state["backbone.body.layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    state["backbone.body.conv1.weight"] = np.zeros((64, 3, 5, 5), np.float32)
    with pytest.raises(ConversionError) as error:
        load_torchvision_resnet(resnet18, state)
    message = str(error.value)
    assert "without a checkpoint key (1): backbone.body.layer3.1.bn2.running_var" in message
    assert "shape mismatches (1): backbone.body.conv1.weight (64, 3, 5, 5) for conv1/kernel (7, 7, 3, 64)" in message
    assert "not used (1): backbone.body.layer5.0.conv1.weight" in message
    np.testing.assert_array_equal(resnet18.get_layer("conv1").get_weights()[0], before)  # nothing set
