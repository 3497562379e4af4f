import keras
import numpy as np
import pytest

from fpn_keras.models import backbones


def test_small_resnet_strides():
    model = backbones.build_backbone("small_resnet", widths=(8, 16, 32, 64))
    out = model(np.zeros((1, 64, 96, 3), "float32"))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "C2": (1, 16, 24, 8), "C3": (1, 8, 12, 16), "C4": (1, 4, 6, 32), "C5": (1, 2, 3, 64)}


@pytest.mark.parametrize("name,channels", [
    ("resnet50", (256, 512, 1024, 2048)),
    ("mobilenet_v3_small", (72, 96, 288, 576)),
])
def test_applications_backbones_give_c2_to_c5(name, channels):
    model = backbones.build_backbone(name)
    out = model(np.zeros((1, 128, 128, 3), "float32"))
    for level, c in zip(range(2, 6), channels):
        assert tuple(out[f"C{level}"].shape) == (1, 128 // 2**level, 128 // 2**level, c)


def test_freezing_stem_and_batchnorm():
    model = backbones.resnet("resnet50", freeze_at=2, freeze_batchnorm=True)
    frozen = {layer.name for layer in model.layers if not layer.trainable}
    assert "conv1_conv" in frozen and "conv2_block1_1_conv" in frozen
    assert "conv3_block1_1_conv" not in frozen
    assert all(not l.trainable for l in model.layers if isinstance(l, keras.layers.BatchNormalization))


def test_imagenet_weights_offline_gives_a_clear_error(monkeypatch):
    def offline(**kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: Network is unreachable")

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    with pytest.raises(RuntimeError, match="offline.*local path"):
        backbones.build_backbone("resnet50", weights="imagenet")


def test_local_weights_path(tmp_path):
    source = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(None, None, 3))
    path = str(tmp_path / "mnv3_small_notop.weights.h5")
    source.save_weights(path)
    model = backbones.build_backbone("mobilenet_v3_small", weights=path)
    first_conv = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)][0]
    source_conv = [l for l in source.layers if isinstance(l, keras.layers.Conv2D)][0]
    np.testing.assert_array_equal(first_conv.get_weights()[0], source_conv.get_weights()[0])
    with pytest.raises(ValueError, match="is not a file"):
        backbones.build_backbone("resnet50", weights=str(tmp_path / "missing.h5"))


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        backbones.build_backbone("vgg16")


def test_torchvision_resnet_names_build_and_validate_recipe_args():
    from fpn_keras.build import check_model_args
    from fpn_keras.config import RecipeError, load_recipe

    model = backbones.build_backbone("torchvision_resnet18", norm_epsilon=0.0, trainable_layers=2)
    out = model(np.zeros((1, 64, 96, 3), "float32"))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "C2": (1, 16, 24, 64), "C3": (1, 8, 12, 128), "C4": (1, 4, 6, 256), "C5": (1, 2, 3, 512)}
    assert model.get_layer("layer1.0.bn1").epsilon == 0.0 and not model.get_layer("layer2.0.conv1").trainable
    assert {"torchvision_resnet50", "torchvision_resnet101"} <= set(backbones.BACKBONES)
    with pytest.raises(ValueError, match="nothing is downloaded"):
        backbones.build_backbone("torchvision_resnet50", weights="imagenet")
    recipe = load_recipe("retinanet_synthetic", ["model.backbone=torchvision_resnet50",
                                                 "model.backbone_args={norm_epsilon: 0.0, trainable_layers: 3}"])
    check_model_args(recipe)
    recipe = load_recipe("retinanet_synthetic", ["model.backbone=torchvision_resnet50",
                                                 "model.backbone_args={depth: 18}"])
    with pytest.raises(RecipeError, match="unknown key 'model.backbone_args.depth'"):
        check_model_args(recipe)
