"""Training at scale without losing work: schedules, checkpoint / resume after a
SIGKILL, NaN and out-of-memory guards, learning-rate logging (issue 5)."""

import dataclasses
import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from fpn_keras import training
from fpn_keras.build import WarmupStepDecay, build_model, build_optimizer
from train_helpers import tiny_recipe

HERE = os.path.dirname(os.path.abspath(__file__))



# ------------------------------------------------------------------ schedules
def test_paper_step_schedule_with_linear_warmup_hand_computed():
    # 90 steps, lr 0.02, warmup 10 steps from 0.001 x lr, /10 at 2/3 (60) and 8/9 (80).
    recipe = tiny_recipe(learning_rate=0.02, epochs=9, warmup_steps=10, warmup_factor=0.001,
                         schedule="step", momentum=0.9, weight_decay=1e-4, global_clipnorm=5.0)
    optimizer = build_optimizer(recipe, steps_per_epoch=10)
    schedule = optimizer._learning_rate
    assert isinstance(schedule, WarmupStepDecay) and schedule.boundaries == [60, 80]
    expected = {0: 0.02 * 0.001, 5: 0.02 * (0.001 * 0.5 + 0.5), 10: 0.02, 59: 0.02, 60: 0.002,
                79: 0.002, 80: 0.0002, 89: 0.0002}
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-5), step
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum == 0.9
    assert optimizer.global_clipnorm == 5.0 and optimizer.clipnorm is None
    # Weight decay 1e-4 on kernels, not on biases / BN / GN parameters.
    assert optimizer.weight_decay == pytest.approx(1e-4)
    model = build_model(recipe, class_names=["a", "b", "c", "d"])
    model(np.zeros((1, 128, 128, 3), "float32"))
    decayed = {v.path for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert any("kernel" in p for p in decayed)
    assert not any(p.endswith(("bias", "beta", "gamma")) for p in decayed)
    # The schedule survives a save / load of the optimizer config.
    clone = keras.optimizers.SGD.from_config(optimizer.get_config())
    assert float(clone._learning_rate(70)) == pytest.approx(0.002)


def test_cosine_warmup_and_linear_lr_scaling_with_global_batch():
    # The paper's lr 0.02 is for 16 images; a global batch of 2 gets 0.0025.
    recipe = tiny_recipe(learning_rate=0.02, scale_lr_with_batch=True, reference_batch_size=16,
                         batch_size=2, schedule="cosine", warmup_steps=10, warmup_factor=0.1, epochs=5)
    schedule = build_optimizer(recipe, steps_per_epoch=10)._learning_rate
    assert float(schedule(0)) == pytest.approx(0.0025 * 0.1, rel=1e-5)
    assert float(schedule(5)) == pytest.approx(0.0025 * 0.55, rel=1e-5)
    assert float(schedule(10)) == pytest.approx(0.0025, rel=1e-5)
    # cosine to alpha=0.01 of the peak at the end (50 steps)
    assert float(schedule(50)) == pytest.approx(0.0025 * 0.01, rel=1e-4)


# ------------------------------------------------------------ kill / resume
class Probe(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps, self.lrs, self.epochs, self.weights_at_start = [], [], [], None

    def on_train_begin(self, logs=None):
        if self.weights_at_start is None:
            self.weights_at_start = [np.array(w) for w in self.model.weights]

    def on_train_batch_begin(self, batch, logs=None):
        self.steps.append(int(np.asarray(self.model.optimizer.iterations)))
        self.lrs.append(float(np.asarray(self.model.optimizer.learning_rate)))

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_sigkill_mid_epoch_then_resume_continues_from_the_saved_step(tmp_path):
    out = str(tmp_path / "run")
    # 2 epochs x 4 steps; checkpoints every 3 steps and at epoch ends -> 3, 4, 6;
    # the process SIGKILLs itself right after step 7 (in epoch 2, before any save).
    result = subprocess.run([sys.executable, os.path.join(HERE, "train_helpers.py"), out, "7"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == -9, result.stderr[-3000:]
    with open(os.path.join(out, "checkpoints", "checkpoint.json")) as f:
        state = json.load(f)
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (6, 1, 2)
    assert not os.path.exists(os.path.join(out, "model.keras"))

    recipe = tiny_recipe()
    probe = Probe()
    model, _ = training.train(recipe, out, verbose=0, resume=True, callbacks=[probe])

    # The weights the resumed run started from are the checkpoint's.
    saved = build_model(recipe, class_names=model.class_names)
    saved(np.zeros((1, 128, 128, 3), "float32"))
    saved.compile(optimizer=build_optimizer(recipe, 4))
    saved.optimizer.build(saved.trainable_variables)
    saved.load_weights(os.path.join(out, "checkpoints", "ckpt-000000006.weights.h5"))
    assert len(saved.weights) == len(probe.weights_at_start)  # same architecture, same order
    for variable, started in zip(saved.weights, probe.weights_at_start):
        np.testing.assert_array_equal(started, np.asarray(variable), err_msg=variable.path)
    assert int(np.asarray(saved.optimizer.iterations)) == 6

    # It trained steps 6 and 7 (the rest of epoch 2) only: no step twice, none skipped,
    # and ends at 8 = 2 epochs x 4 steps, like an uninterrupted run.
    assert probe.steps == [6, 7], probe.steps
    assert probe.epochs == [1]
    assert int(np.asarray(model.optimizer.iterations)) == 8
    # The LR schedule continues: boundaries at floor(8 * 2/3) = 5 and floor(8 * 8/9) = 7.
    np.testing.assert_allclose(probe.lrs, [0.001, 0.0001], rtol=1e-5)
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["optimizer_steps"] == 8
    with open(os.path.join(out, "checkpoints", "checkpoint.json")) as f:
        assert json.load(f)["step"] == 8
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == [
        "checkpoint.json", "ckpt-000000004.weights.h5", "ckpt-000000006.weights.h5",
        "ckpt-000000008.weights.h5"]  # keep_checkpoints = 3
    # Learning rate and losses logged per epoch (CSV; TensorBoard gets the same logs).
    with open(os.path.join(out, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[0]["learning_rate"]) == pytest.approx(0.01, rel=1e-5)  # after step 4
    assert float(rows[1]["learning_rate"]) == pytest.approx(0.0001, rel=1e-5)  # after step 8
    assert os.listdir(os.path.join(out, "logs", "train"))
    # Best model by COCO AP (evaluated on the last epoch) kept and loadable.
    assert json.load(open(os.path.join(out, "best.keras.json")))["epoch"] == 2
    keras.saving.load_model(os.path.join(out, "best.keras"))


class Fingerprints:
    """Wraps `training.build_datasets` so that every training batch drawn from the pipeline
    appends (sum of pixels, sum of boxes, image ids) to `batches` (in order: the map is
    sequential; batches prefetched beyond the last step come last)."""

    def __init__(self, monkeypatch):
        self.batches = []
        real = training.build_datasets

        def record(images, y):
            def note(images, boxes, labels):
                self.batches.append((float(np.asarray(images, np.float64).sum()),
                                     float(np.asarray(boxes, np.float64).sum()), int(np.asarray(labels).sum())))
                return 0
            done = tf.py_function(note, [images, y["boxes"], y["labels"]], tf.int64)
            with tf.control_dependencies([done]):
                return tf.identity(images), y

        def recorded(recipe):
            data = real(recipe)
            return dataclasses.replace(data, train_from=lambda *a: data.train_from(*a).map(record))

        monkeypatch.setattr(training, "build_datasets", recorded)


def test_a_resumed_run_trains_on_the_batches_and_ends_with_the_weights_of_an_uninterrupted_one(
        tmp_path, monkeypatch):
    """Killed after step 7 of 8 (checkpoint of step 6), resumed: steps 6 and 7 see the
    pixels and boxes of an uninterrupted run's steps 6 and 7 (scale jitter and colour
    augmentation on), and the final weights match."""
    augment = {"scale_range": [0.8, 1.25], "brightness": 0.2}
    fingerprints = Fingerprints(monkeypatch)
    recipe = tiny_recipe()
    recipe.data.augment = augment
    uninterrupted, _ = training.train(recipe, str(tmp_path / "whole"), verbose=0)
    expected = fingerprints.batches[:8]
    assert len(set(expected)) == 8

    out = str(tmp_path / "run")
    result = subprocess.run([sys.executable, os.path.join(HERE, "train_helpers.py"), out, "7", "--augment"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == -9, result.stderr[-3000:]
    fingerprints.batches.clear()
    recipe = tiny_recipe()
    recipe.data.augment = augment
    resumed, _ = training.train(recipe, out, verbose=0, resume=True)
    assert fingerprints.batches[:2] == expected[6:8]
    for a, b in zip(uninterrupted.weights, resumed.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=a.path)


def test_sigkill_in_the_middle_of_a_save_keeps_the_previous_checkpoint(tmp_path):
    """keep_checkpoints 1: the half-written checkpoint of step 6 is never named, and the
    one of step 4 is not deleted before a new one is complete and recorded."""
    out = str(tmp_path / "run")
    result = subprocess.run([sys.executable, os.path.join(HERE, "train_helpers.py"), out, "0",
                             "--kill-in-save", "6", "--keep", "1"], capture_output=True, text=True, timeout=180)
    assert result.returncode == -9, result.stderr[-3000:]
    folder = os.path.join(out, "checkpoints")
    with open(os.path.join(folder, "checkpoint.json")) as f:
        state = json.load(f)
    assert (state["step"], state["path"], state["all"]) == (4, "ckpt-000000004.weights.h5",
                                                           ["ckpt-000000004.weights.h5"])
    assert sorted(os.listdir(folder)) == ["checkpoint.json", "ckpt-000000004.weights.h5",
                                          "ckpt-000000006.tmp.weights.h5"]  # the torn write
    recipe = tiny_recipe(keep_checkpoints=1)
    probe = Probe()
    model, _ = training.train(recipe, out, verbose=0, resume=True, callbacks=[probe])
    assert probe.steps == [4, 5, 6, 7] and int(np.asarray(model.optimizer.iterations)) == 8
    assert sorted(f for f in os.listdir(folder) if ".tmp." not in f) == [
        "checkpoint.json", "ckpt-000000008.weights.h5"]


def _write_recipe(path, **train):
    import yaml

    recipe = tiny_recipe(**train).to_dict()
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f)
    return str(path)


def test_ctrl_c_through_the_cli_saves_the_exact_step_and_prints_the_resume_command(tmp_path):
    """SIGINT in epoch 2 of 3 with checkpoint_every_n_steps 0: the step in progress
    finishes, is checkpointed, and `resume with: ...` continues from it to the end."""
    import signal
    import time

    recipe = _write_recipe(tmp_path / "tiny.yaml", epochs=3, checkpoint_every_n_steps=0)
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "fpn_keras", "train", "--recipe", recipe, "--out", str(out), "--quiet"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=os.path.dirname(HERE))
    history = out / "history.csv"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:  # wait for the end of epoch 1
        if history.exists() and len(history.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 130, stderr[-3000:]
    with open(out / "checkpoints" / "checkpoint.json") as f:
        state = json.load(f)
    assert 4 < state["step"] < 12, state  # inside epoch 2 or 3, not at an epoch end
    assert f"checkpoint {out / 'checkpoints' / state['path']} holds step {state['step']}" in stderr, stderr
    command = stderr.split("resume with: ", 1)[1].strip().splitlines()[0]
    assert command.endswith("--resume") and f"--out {out}" in command, command
    assert not (out / "model.keras").exists()

    resumed = subprocess.run([sys.executable, "-m", "fpn_keras", *command.split()[1:]],
                             capture_output=True, text=True, timeout=300, cwd=os.path.dirname(HERE))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {state['step']}" in resumed.stdout, resumed.stdout[-2000:]
    with open(out / "metrics.json") as f:
        assert json.load(f)["optimizer_steps"] == 12  # 3 epochs x 4 steps, none twice


# --------------------------------------------------------------------- guards
def test_nan_in_an_image_stops_training_naming_the_step_and_the_intact_checkpoint(tmp_path, monkeypatch):
    real = training.build_datasets

    def poisoned(recipe):
        data = real(recipe)

        def poison(i, batch):
            images, y = batch
            return tf.where(i == 1, tf.fill(tf.shape(images), float("nan")), images), y

        return dataclasses.replace(data, train_from=lambda *a: data.train_from(*a).enumerate().map(poison))

    monkeypatch.setattr(training, "build_datasets", poisoned)
    out = str(tmp_path / "run")
    with pytest.raises(training.TrainingDivergedError) as error:
        training.train(tiny_recipe(checkpoint_every_n_steps=1), out, verbose=0)
    message = str(error.value)
    checkpoint = os.path.join(out, "checkpoints", "ckpt-000000001.weights.h5")
    assert "NaN" in message and "epoch 1, batch 2" in message and "optimizer step 2" in message, message
    assert checkpoint in message and "(step 1" in message, message
    # The last checkpoint is the finite one of step 1; nothing was saved after the NaN.
    with open(os.path.join(out, "checkpoints", "checkpoint.json")) as f:
        assert json.load(f)["step"] == 1
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["checkpoint.json",
                                                                    "ckpt-000000001.weights.h5"]
    recipe = tiny_recipe()
    model = build_model(recipe, class_names=["a", "b", "c", "d"])
    model(np.zeros((1, 128, 128, 3), "float32"))
    model.compile(optimizer=build_optimizer(recipe, 4))
    model.optimizer.build(model.trainable_variables)
    model.load_weights(checkpoint)
    assert all(np.isfinite(np.asarray(w)).all() for w in model.weights)
    assert not os.path.exists(os.path.join(out, "model.keras"))


def test_out_of_memory_becomes_a_clear_error(tmp_path, monkeypatch):
    def fit(self, *args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[16,256,200,200]")

    monkeypatch.setattr(keras.Model, "fit", fit)
    with pytest.raises(training.TrainingOutOfMemoryError) as error:
        training.train(tiny_recipe(), str(tmp_path / "run"), verbose=0)
    message = str(error.value)
    assert "out of memory" in message and "train.batch_size" in message and "data.image_size" in message
    assert "OOM when allocating" in message
    assert isinstance(error.value.__cause__, tf.errors.ResourceExhaustedError)


def test_loss_guard_stops_training_and_no_checkpoint_is_written_after_a_non_finite_loss(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.optimizer.build(model.trainable_variables)
    checkpointer = training.Checkpointer(str(tmp_path), steps_per_epoch=4, every_n_steps=1)
    guard = training.NonFiniteLossGuard(checkpointer, 4)
    for callback in (guard, checkpointer):
        callback.set_model(model)
    guard.on_epoch_begin(0)
    model.optimizer.iterations.assign(1)
    for callback in (guard, checkpointer):
        callback.on_train_batch_end(0, {"loss": 1.5})
    model.optimizer.iterations.assign(2)
    for callback in (guard, checkpointer):
        callback.on_train_batch_end(1, {"loss": float("inf")})
    checkpointer.on_epoch_end(0, {"loss": float("inf")})
    assert model.stop_training
    assert "the loss became inf at epoch 1, batch 2 of the epoch (optimizer step 2)" in guard.message
    assert "ckpt-000000001.weights.h5 (step 1, epoch 1, intact)" in guard.message
    assert checkpointer.latest()["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.json", "ckpt-000000001.weights.h5"]


def test_best_model_of_an_rpn_run_is_kept_by_the_logged_ar1000(tmp_path):
    recipe = tiny_recipe(eval_every_n_epochs=1, checkpoint_every_n_steps=0)
    recipe.model.head = "rpn"
    recipe.model.head_args = {"min_level": 3, "max_level": 5, "anchor_scale": 4.0}
    out = str(tmp_path / "rpn")
    training.train(recipe, out, verbose=0)
    with open(os.path.join(out, "best.keras.json")) as f:
        best = json.load(f)
    with open(os.path.join(out, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert best["monitor"] == "val_AR1000"
    values = [float(r["val_AR1000"]) for r in rows]
    assert best["value"] == pytest.approx(max(values)) and best["epoch"] == 1 + values.index(max(values))


def test_best_model_saver_keeps_the_higher_value_only(tmp_path):
    saver = training.BestModelSaver(str(tmp_path / "best.keras"), "val_AR1000")
    saved = []
    saver.set_model(type("Model", (), {"save": lambda self, path: saved.append(path),
                                       "_flatten_layers": lambda self, include_self=True: []})())
    for epoch, value in enumerate([0.2, 0.1, 0.3, float("nan")]):
        saver.on_epoch_end(epoch, {"val_AP": 0.9, "val_AR1000": value})
    assert len(saved) == 2 and saver.best == {"monitor": "val_AR1000", "value": 0.3, "epoch": 3}


def test_any_bounding_box_format_trains_exactly_like_xyxy(tmp_path):
    """The pipeline gives boxes in the model's format: the same run in yxyx or center_xywh
    has the same losses and the same COCO AP as in xyxy."""
    results = {}
    for fmt in ("xyxy", "yxyx", "center_xywh"):
        recipe = tiny_recipe(epochs=1, eval_every_n_epochs=1, checkpoint_every_n_steps=0)
        recipe.model.bounding_box_format = fmt
        _, metrics = training.train(recipe, str(tmp_path / fmt), verbose=0)
        with open(tmp_path / fmt / "history.csv") as f:
            row = next(csv.DictReader(f))
        results[fmt] = (float(row["loss"]), float(row["box_loss"]), metrics["AP"], metrics["AR100"])
    for fmt in ("yxyx", "center_xywh"):
        np.testing.assert_allclose(results[fmt], results["xyxy"], rtol=1e-4, atol=1e-6, err_msg=fmt)
