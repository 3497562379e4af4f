"""Every recipe in recipes/ loads, validates and builds its model (weights=None, no download)."""
import os

import numpy as np
import pytest
import yaml

from fpn_keras.config import load_recipe
from fpn_keras.recipe_files import available_recipes, recipes_dir, resolve_recipe_path

RECIPES = available_recipes()
REAL = ("faster_rcnn_r50_fpn_1x_coco", "faster_rcnn_r101_fpn_1x_coco", "retinanet_r50_fpn_1x_coco",
        "rpn_r50_fpn_coco", "faster_rcnn_r50_fpn_voc", "retinanet_mobilenetv3_fpnlite_320_coco",
        "retinanet_synthetic", "faster_rcnn_synthetic", "rpn_synthetic")


def test_expected_recipes_exist():
    assert set(REAL) <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_header_names_source_and_target(name):
    with open(resolve_recipe_path(name)) as f:
        first = f.readline()
    assert first.startswith("# ") and "target" in first.lower(), first


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds(name):
    from fpn_keras.build import build_model
    from fpn_keras.models.detector import HEADS

    recipe = load_recipe(name, ["model.backbone_weights=null"])
    model = build_model(recipe)
    outputs = model(np.zeros((1, 128, 128, 3), np.float32), training=False)
    assert isinstance(outputs, dict) and outputs
    assert isinstance(model.head, HEADS[recipe.model.head])
    # The recipe's settings reached the model, and it detects in the padded output format.
    assert model.head.min_level == recipe.model.head_args.get("min_level", model.head.min_level)
    assert model.num_classes == (1 if recipe.model.head == "rpn" else recipe.model.num_classes)
    detections = model.predict_on_batch(np.zeros((1, 128, 128, 3), np.float32))
    assert detections["boxes"].shape == (1, model.head.max_detections, 4)
    assert detections["labels"].shape == detections["scores"].shape == (1, model.head.max_detections)


def test_faithful_numbers():
    """The real recipes say what their sources say."""
    r50 = load_recipe("faster_rcnn_r50_fpn_1x_coco")
    assert (r50.train.batch_size, r50.train.steps, r50.train.learning_rate) == (16, 90000, 0.02)
    assert r50.train.lr_steps == [60000, 80000] and r50.train.schedule == "step"
    assert r50.data.resize == [800, 1333] and r50.data.augment["max_size"] == 1333
    assert max(r50.data.augment["short_sides"]) == 800
    assert r50.model.backbone_weights == "imagenet" and r50.model.backbone_args["freeze_at"] == 2
    r101 = load_recipe("faster_rcnn_r101_fpn_1x_coco")
    assert r101.model.backbone == "resnet101" and r101.train == r50.train and r101.data == r50.data
    retina = load_recipe("retinanet_r50_fpn_1x_coco")
    assert retina.model.head == "retinanet" and retina.train.learning_rate == 0.01
    assert retina.train.steps == 90000 and retina.data == r50.data
    rpn = load_recipe("rpn_r50_fpn_coco")
    assert rpn.model.head == "rpn" and rpn.train.steps == 40000 and rpn.train.lr_steps == [30000]
    voc = load_recipe("faster_rcnn_r50_fpn_voc")
    assert voc.model.num_classes == 20 and voc.data.train_split == "trainval"
    assert voc.data.val_split == "test" and len(voc.data.train) == 2
    assert (voc.train.steps, voc.train.lr_steps) == (18000, [12000, 16000])
    demo = load_recipe("rpn_synthetic")
    assert demo.model.head == "rpn" and demo.data == load_recipe("faster_rcnn_synthetic").data


def test_recipes_are_plain_data():
    for name in RECIPES:
        with open(f"{recipes_dir()}/{name}.yaml") as f:
            text = f.read()
        assert "!!" not in text and "!<" not in text
        assert isinstance(yaml.safe_load(text), dict)


def test_rpn_recipe_builds_with_a_datasets_class_names():
    from fpn_keras.build import build_model
    from fpn_keras.config import load_recipe

    model = build_model(load_recipe("rpn_synthetic"), class_names=["rectangle", "ellipse", "triangle", "cross"])
    assert model.num_classes == 1 and model.class_names == ["object"]


def test_an_installed_wheel_ships_every_recipe(tmp_path):
    """The wheel carries recipes/*.yaml to <prefix>/share/fpn_keras/recipes ..."""
    import glob
    import subprocess
    import sys
    import zipfile

    root = os.path.dirname(recipes_dir())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    root, "-w", str(tmp_path)], check=True, timeout=600, cwd=str(tmp_path))
    (wheel,) = glob.glob(str(tmp_path / "fpn_keras-*.whl"))
    shipped = {os.path.basename(n) for n in zipfile.ZipFile(wheel).namelist()
               if "/data/share/fpn_keras/recipes/" in n}
    assert shipped == {os.path.basename(p) for p in glob.glob(os.path.join(root, "recipes", "*.yaml"))}


def test_recipes_dir_falls_back_to_the_installed_share_folder(tmp_path, monkeypatch):
    """... and recipes_dir() finds them there when there is no repository around the package."""
    import sys

    from fpn_keras import recipe_files

    share = tmp_path / "share" / "fpn_keras" / "recipes"
    share.mkdir(parents=True)
    (share / "mine.yaml").write_text("model: {head: retinanet}\n")
    repo_recipes = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(recipe_files.__file__))), "recipes")
    real_isdir = os.path.isdir
    monkeypatch.setattr(recipe_files.os.path, "isdir", lambda p: False if p == repo_recipes else real_isdir(p))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert recipes_dir() == str(share)
    assert "mine" in available_recipes()
