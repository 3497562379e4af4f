"""Recipe schema: types, unknown keys (with suggestions), required keys, `base`
inheritance (+ cycles), `--set` overrides, the train.steps / lr_steps helpers."""

import dataclasses
import os
import pathlib
import re

import pytest
import yaml

from fpn_keras import config, schedules
from fpn_keras.config import RecipeError, load_recipe, recipe_from_dict

PACKAGE = pathlib.Path(config.__file__).parent

MINIMAL = {
    "model": {"num_classes": 3, "backbone": "small_resnet", "head": "retinanet"},
    "data": {"train": "synthetic", "val": "synthetic", "image_size": [128, 128]},
    "train": {"epochs": 1},
}


def write(folder, name, data):
    path = folder / f"{name}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def test_minimal_recipe_and_defaults():
    recipe = recipe_from_dict(MINIMAL)
    assert recipe.model.num_classes == 3
    assert recipe.train.batch_size == 16  # default filled in
    assert recipe.data.train_split == "train" and recipe.data.val_split == "val"
    assert MINIMAL["train"] == {"epochs": 1}  # input not modified


def test_unknown_key_names_key_file_allowed_and_suggests(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["train"]["learing_rate"] = 0.1
    path = write(tmp_path, "typo", data)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert path in message
    assert "train.learing_rate" in message
    assert "did you mean 'learning_rate'" in message
    assert "'batch_size'" in message  # the allowed keys are listed
    assert "\n" not in message


@pytest.mark.parametrize("section, key, value, expected", [
    ("train", "batch_size", "eight", "expected an integer"),
    ("train", "batch_size", 8.5, "expected an integer"),
    ("train", "learning_rate", "fast", "expected a number"),
    ("data", "cache", "yes", "true/false"),
    ("data", "image_size", 128, "expected a string or a list of integers"),
    ("data", "image_size", [128.5, 128], r"image_size: expected a string or a list of integers, received \[128.5"),
    ("data", "train", 3, "expected a string or a list of strings"),
    ("model", "head_args", [1], "expected a mapping"),
    ("model", "head", "yolo", "must be one of"),
])
def test_wrong_types(tmp_path, section, key, value, expected):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data[section][key] = value
    path = write(tmp_path, "bad", data)
    with pytest.raises(RecipeError, match=expected) as info:
        load_recipe(path)
    assert f"{section}.{key}" in str(info.value) and path in str(info.value)


def test_ints_accepted_for_floats_and_lists_of_specs():
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["train"]["learning_rate"] = 1
    data["data"]["train"] = ["synthetic", "synthetic"]
    recipe = recipe_from_dict(data)
    assert recipe.train.learning_rate == 1.0 and isinstance(recipe.train.learning_rate, float)
    assert recipe.data.train == ["synthetic", "synthetic"]


def test_missing_required_key(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    del data["model"]["num_classes"]
    path = write(tmp_path, "missing", data)
    with pytest.raises(RecipeError, match=r"missing required key 'model.num_classes'") as info:
        load_recipe(path)
    assert path in str(info.value)


def test_unknown_section_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown section 'trian' \(did you mean 'train'\?\)"):
        recipe_from_dict(dict(MINIMAL, trian={}))
    path = write(tmp_path, "broken", "model: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)
    path = write(tmp_path, "tagged", "model: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):  # safe loader: no object construction
        load_recipe(path)


def test_augment_and_schedule_checks():
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["data"]["augment"] = {"flip": True, "short_side": [640, 800]}
    with pytest.raises(RecipeError, match=r"data.augment.short_side' \(did you mean 'short_sides'\?\)"):
        recipe_from_dict(data)
    data["data"]["augment"] = {"short_sides": [640, 800], "max_size": 1333}
    data["data"]["resize"] = [800, 1333]
    assert recipe_from_dict(data).data.resize == [800.0, 1333.0]
    data["train"].update(steps=100, lr_steps=[60, 80])
    with pytest.raises(RecipeError, match="needs train.schedule: step"):
        recipe_from_dict(data)
    data["train"]["schedule"] = "step"
    assert recipe_from_dict(data).train.lr_steps == [60.0, 80.0]
    for bad in ([80, 60], [0.5, 60], [60, 120]):
        data["train"]["lr_steps"] = bad
        with pytest.raises(RecipeError, match="lr_steps"):
            recipe_from_dict(data)


def test_augment_keys_match_transforms():
    from fpn_keras.data.transforms import Augment

    assert set(config.AUGMENT_KEYS) == {f.name for f in dataclasses.fields(Augment)}


def test_schedule_helpers():
    cfg = config.TrainConfig(epochs=12)
    assert schedules.schedule_steps(cfg, 100) == (12, 100, 1200)
    assert schedules.lr_boundaries(config.TrainConfig(schedule="step"), 900) == [600, 800]
    cfg = config.TrainConfig(steps=90000, lr_steps=[60000, 80000], schedule="step")
    # COCO train2017 / 16 = 7330 batches: ceil(90000 / 7330) = 13 epochs of ceil(90000 / 13) = 6924 steps
    assert schedules.schedule_steps(cfg, 7330) == (13, 6924, 90000)
    assert schedules.lr_boundaries(cfg, 90000) == [60000, 80000]
    cfg = config.TrainConfig(steps=1000, lr_steps=[0.5, 0.75], schedule="step")
    assert schedules.lr_boundaries(cfg, 1000) == [500, 750]


def test_schedule_with_min_steps_lengthens_small_datasets_in_whole_epochs():
    cfg = config.TrainConfig(epochs=12, min_steps=1300)
    # 360 images / 16 = 22 full batches: 12 x 22 = 264 < 1300 -> ceil(1300 / 22) = 60 epochs
    assert schedules.schedule_steps(cfg, 22) == (60, 22, 1320)
    # a large dataset keeps its 12 epochs
    assert schedules.schedule_steps(cfg, 7330) == (12, 7330, 87960)
    assert schedules.schedule_steps(config.TrainConfig(steps=100, min_steps=300), 40) == (8, 38, 300)


def test_schedule_with_an_unknown_dataset_size():
    # 90k steps of data of unknown size: "epochs" of 1000 steps, so evaluation still runs
    assert schedules.schedule_steps(config.TrainConfig(steps=90000), None) == (90, 1000, 90000)
    assert schedules.schedule_steps(config.TrainConfig(steps=300), None) == (1, 300, 300)
    with pytest.raises(config.RecipeError, match="set train.steps"):
        schedules.schedule_steps(config.TrainConfig(epochs=12), None)


def test_eval_period_in_steps_rounds_to_whole_epochs():
    assert schedules.eval_period_epochs(config.TrainConfig(eval_every_n_epochs=4), 22) == 4
    assert schedules.eval_period_epochs(config.TrainConfig(eval_every_n_steps=500), 22) == 23  # 22.7
    assert schedules.eval_period_epochs(config.TrainConfig(eval_every_n_steps=500), 7330) == 1


@pytest.mark.parametrize("key, value, message", [
    ("image_size", "big", "image_size"), ("image_size", [100, 128], "multiples of 32"),
    ("max_boxes", "many", "max_boxes"), ("max_boxes", 0, "max_boxes"),
    ("holdout_fraction", 1.5, "holdout_fraction"), ("max_image_size", 0, "max_image_size")])
def test_data_auto_settings_are_validated(key, value, message):
    data = dict(MINIMAL["data"], **{key: value})
    with pytest.raises(config.RecipeError, match=message):
        config.recipe_from_dict(dict(MINIMAL, data=data))


def test_holdout_needs_a_single_training_spec():
    data = dict(MINIMAL["data"], train=["voc:a", "voc:b"], val="holdout")
    with pytest.raises(config.RecipeError, match="single data.train"):
        config.recipe_from_dict(dict(MINIMAL, data=data))


def test_load_recipe_records_where_each_setting_came_from():
    recipe = config.load_recipe("retinanet_user_data", ["train.batch_size=8"])
    assert recipe.origins["train.batch_size"] == "--set"
    assert recipe.origins["data.image_size"] == "recipe retinanet_user_data.yaml"
    assert "train.momentum" not in recipe.origins  # a dataclass default
    assert "origins" not in recipe.to_dict()


def test_base_inheritance_deep_merges(tmp_path):
    write(tmp_path, "parent", MINIMAL | {"model": dict(MINIMAL["model"], head_args={"channels": 64,
                                                                                 "num_convs": 2})})
    child = write(tmp_path, "child", {"base": "parent", "model": {"head_args": {"channels": 32}},
                                      "train": {"batch_size": 4}})
    recipe = load_recipe(child)
    assert recipe.model.head_args == {"channels": 32, "num_convs": 2}  # merged key by key
    assert recipe.model.num_classes == 3 and recipe.train.epochs == 1  # inherited
    assert recipe.train.batch_size == 4  # the referencing file wins


def test_section_level_base(tmp_path):
    write(tmp_path, "parent", MINIMAL | {"model": dict(MINIMAL["model"], head_args={"channels": 64})})
    child = write(tmp_path, "child", {
        "model": {"num_classes": 1, "backbone": "small_resnet", "head": "rpn"},
        "data": {"base": "parent"},
        "train": {"base": "parent", "epochs": 5}})
    recipe = load_recipe(child)
    assert recipe.model.head_args == {}  # the model section was not inherited
    assert recipe.data.image_size == [128, 128] and recipe.train.epochs == 5


def test_base_cycle_and_missing_base(tmp_path):
    a = write(tmp_path, "a", {"base": "b", **MINIMAL})
    write(tmp_path, "b", {"base": "a"})
    with pytest.raises(RecipeError, match=r"cycle: a.yaml -> b.yaml -> a.yaml"):
        load_recipe(a)
    selfish = write(tmp_path, "selfish", {"base": "selfish", **MINIMAL})
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(selfish)
    orphan = write(tmp_path, "orphan", {"base": "no_such_recipe", **MINIMAL})
    with pytest.raises(RecipeError, match="no recipe 'no_such_recipe'"):
        load_recipe(orphan)


def test_error_in_base_names_the_base_file(tmp_path):
    parent = write(tmp_path, "parent", {"train": {"learing_rate": 0.1}})
    child = write(tmp_path, "child", {"base": "parent", **MINIMAL})
    with pytest.raises(RecipeError, match=re.escape(parent)):
        load_recipe(child)


def test_overrides(tmp_path):
    path = write(tmp_path, "r", MINIMAL)
    recipe = load_recipe(path, ["train.batch_size=8", "model.backbone=resnet101",
                                "data.image_size=[256, 256]", "model.head_args.channels=32",
                                "data.augment.flip=false"])
    assert recipe.train.batch_size == 8 and recipe.model.backbone == "resnet101"
    assert recipe.data.image_size == [256, 256]
    assert recipe.model.head_args == {"channels": 32}
    assert recipe.data.augment == {"flip": False}


@pytest.mark.parametrize("override, expected", [
    ("train.learing_rate=0.1", r"unknown key 'train.learing_rate' \(did you mean 'learning_rate'\?\)"),
    ("trian.batch_size=2", r"unknown section 'trian' \(did you mean 'train'\?\)"),
    ("train.batch_size.x=2", "is not a mapping"),
    ("batch_size=2", "name a section and a key"),
    ("train.batch_size", "must look like section.key=value"),
    ("train.batch_size=two", r"with --set train.batch_size=two: train.batch_size: expected an integer"),
])
def test_bad_overrides(tmp_path, override, expected):
    path = write(tmp_path, "r", MINIMAL)
    with pytest.raises(RecipeError, match=expected):
        load_recipe(path, [override])


def test_dumped_recipe_round_trips(tmp_path):
    recipe = load_recipe("faster_rcnn_r50_fpn_voc")
    out = tmp_path / "recipe.yaml"
    config.dump_recipe(recipe, out)
    assert load_recipe(str(out)) == recipe


def test_package_uses_no_pickle_and_safe_yaml():
    """No pickle anywhere but the torch-checkpoint and detectron2 .pkl readers, whose
    Unpicklers refuse every class outside their allowlists (tests/test_torch_checkpoint.py and
    tests/test_detectron2.py feed them malicious pickles)."""
    offenders = []
    restricted = {PACKAGE / "convert" / "torch_checkpoint.py", PACKAGE / "convert" / "detectron2_checkpoint.py"}
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if re.search(r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|joblib)\b", text, re.M):
            if not (path in restricted and "def find_class" in text and "pickle.load(" not in text):
                offenders.append(str(path))
        if re.search(r"yaml\.(load|unsafe_load|full_load)\(", text) or "yaml.Loader" in text:
            offenders.append(f"{path}: unsafe yaml")
    assert not offenders, offenders
    assert os.path.isfile(PACKAGE / "config.py")
