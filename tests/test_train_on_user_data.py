"""Training on a user's own folder through the real CLI (`fpn-keras train --data ...`).

The folders are written here (bench/shapes_folder.py): JPEGs of 96x120 and 120x96
pixels (not the 128x128 the model trains at), two categories with ids 5 and 9,
2-3 shapes of 16-48 px per image. The recipe is the `--data` default
(retinanet_user_data) with a smaller model and schedule so it runs in about a minute.

Bound: the held-out AP50 must exceed 0.4. Measured on this machine kind (2 CPU cores,
TF 2.21, on a COCO folder like the one below): the schedule here (13 full batches x 40
epochs = 520 steps) reached AP50 0.679; 130 steps reached 0.065 and 13 steps (one
epoch; the old bug gave one step per epoch, 40 steps) 0.001.
"""

import json
import os
import re
import subprocess
import sys

import pytest

import shapes_folder

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
CLI = [sys.executable, "-m", "fpn_keras"]
AP50_BOUND = 0.4
SIZES = [(96, 120), (120, 96)]
DRAW = {"max_objects": 3, "min_side": 16, "max_side": 48}

TINY_RECIPE = """\
base: retinanet_user_data
model:
  backbone_args: {widths: [16, 32, 64, 128]}
  fpn_channels: 32
  head_args: {min_level: 3, max_level: 5, anchor_scale: 2.0, channels: 32, num_convs: 1}
data:
  max_image_size: 128
  augment: {flip: true}
train:
  batch_size: 8
  epochs: 40
  min_steps: null
  warmup_steps: 20
  learning_rate: 0.005
  eval_every_n_steps: null
  eval_every_n_epochs: 100
"""


def train(tmp_path, *args):
    recipe = tmp_path / "tiny_user_data.yaml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "run"
    result = subprocess.run([*CLI, "train", "--recipe", str(recipe), "--out", str(out), "--quiet", *args],
                            capture_output=True, text=True, env=ENV, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "metrics.json") as f:
        return json.load(f), result.stdout, out


def check_run(record, num_images):
    train_images = num_images - round(0.1 * num_images)
    assert record["num_train_images"] == train_images
    assert record["steps_per_epoch"] == train_images // 8  # full batches of the images that passed
    assert record["optimizer_steps"] == record["epochs"] * record["steps_per_epoch"] == 40 * (train_images // 8)
    assert record["image_size"] == [128, 128]  # median long side 120 -> 128
    assert "held-out 10%" in record["evaluated_on"]
    assert record["metrics"]["AP50"] > AP50_BOUND, record["metrics"]


def test_coco_folder_trains_and_is_evaluated_on_held_out_images(tmp_path):
    # one unreadable image: skipped and counted, the schedule follows the 119 that pass
    spec = shapes_folder.write_coco(str(tmp_path / "data"), num_images=121, size=SIZES, seed=3,
                                    category_ids=(5, 9), **DRAW)
    with open(tmp_path / "data" / "images" / "000120.jpg", "wb") as f:
        f.write(b"not a jpeg")
    record, stdout, out = train(tmp_path, "--data", spec)
    check_run(record, 120)
    assert re.search(r"train data .* 108 images", stdout) and re.search(r"val data +the held-out 10%", stdout)
    assert "COCO metrics on the held-out 10%" in stdout and "not used for training" in stdout
    # `evaluate` with nothing but the model file measures the same held-out images
    again = subprocess.run([*CLI, "evaluate", "--model", str(out / "model.keras"), "--out", str(tmp_path / "ev")],
                           capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    with open(tmp_path / "ev" / "metrics.json") as f:
        evaluated = json.load(f)
    assert evaluated["num_images"] == 12
    assert evaluated["metrics"]["AP50"] == pytest.approx(record["metrics"]["AP50"], abs=1e-6)
    with open(tmp_path / "ev" / "results.json") as f:
        assert {r["category_id"] for r in json.load(f)} <= {5, 9}


def test_voc_folder_trains_and_is_evaluated_on_held_out_images(tmp_path):
    spec = shapes_folder.write_voc(str(tmp_path / "voc"), num_images=120, size=SIZES, seed=4,
                                   names=("square", "disc"), splits={"train": 1.0}, **DRAW)
    record, stdout, _ = train(tmp_path, "--data", spec)  # class names read from the XML files
    check_run(record, 120)
