"""Training options of the peers on Keras' own machinery (issue 16): weight EMA
(train.use_ema), gradient accumulation (train.gradient_accumulation_steps) and the
recipe keys that set them and synchronized BatchNorm (train.sync_batchnorm).

Tiny RetinaNets on 64x64 images, one to three SGD steps each, expected values
computed from the per-step weights by hand (numpy). The 2-replica SyncBN check is
in tests/test_distribute.py (a subprocess: logical devices)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from fpn_keras import build, schedules
from fpn_keras.callbacks import EMAWeights
from fpn_keras.config import RecipeError
from fpn_keras.models.backbones import small_resnet
from fpn_keras.models.detector import FPNDetector
from fpn_keras.models.retinanet import RetinaNet
from train_helpers import tiny_recipe

SIZE = 64


def tiny_model(seed=7):
    """small_resnet + RetinaNet on P3-P5; frozen BN (batch statistics would make a batch
    of 4 differ from two of 2 for a reason that is not the optimizer's)."""
    keras.utils.set_random_seed(seed)
    backbone = small_resnet((8, 16, 32, 64))
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model = FPNDetector(num_classes=3, backbone=backbone, fpn_channels=16,
                        head=RetinaNet(num_classes=3, min_level=3, max_level=5, anchor_scale=2.0,
                                       channels=16, num_convs=1, name="head"))
    model(np.zeros((1, SIZE, SIZE, 3), "float32"))
    return model


def batches(num_images, seed=0):
    """Images with the same two boxes each: every image has the same number of positive
    anchors, so a loss normalised by the batch's positives is a mean over images."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (num_images, SIZE, SIZE, 3)).astype("float32")
    boxes = np.tile(np.array([[[8, 8, 40, 30], [30, 20, 60, 60]]], "float32"), (num_images, 1, 1))
    labels = np.tile(np.array([[0, 2]], "int32"), (num_images, 1))
    return images, {"boxes": boxes, "labels": labels}


def recipe(**train):
    settings = {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant",
                "warmup_steps": 0, "learning_rate": 0.05, "epochs": 1}
    settings.update(train)
    return tiny_recipe(**settings)


class WeightsAfterEachBatch(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.per_batch, self.updates, self.at_epoch_end = [], [], None

    def on_train_batch_end(self, batch, logs=None):
        self.per_batch.append([np.array(v) for v in self.model.trainable_variables])
        self.updates.append(int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)))

    def on_epoch_end(self, epoch, logs=None):
        self.at_epoch_end = [np.array(v) for v in self.model.trainable_variables]


def fit(model, optimizer, images, y, batch_size, callbacks=()):
    model.compile(optimizer=optimizer)
    ds = tf.data.Dataset.from_tensor_slices((images, y)).batch(batch_size)
    model.fit(ds, epochs=1, verbose=0, shuffle=False, callbacks=list(callbacks))


def assert_weights_close(actual, expected, rtol=1e-5, atol=1e-6):
    for a, b in zip(actual, expected):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def test_recipe_keys_are_validated_and_reach_the_optimizer():
    cfg = recipe(use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=5, gradient_accumulation_steps=4)
    optimizer = build.build_optimizer(cfg, steps_per_epoch=4)
    assert optimizer.use_ema and optimizer.ema_momentum == 0.9 and optimizer.ema_overwrite_frequency == 5
    assert optimizer.gradient_accumulation_steps == 4
    plain = build.build_optimizer(recipe(gradient_accumulation_steps=1), steps_per_epoch=4)
    assert not plain.use_ema and plain.gradient_accumulation_steps is None  # 1 = every batch
    mixed = build.build_optimizer(recipe(use_ema=True, gradient_accumulation_steps=2,
                                         mixed_precision="mixed_float16"), steps_per_epoch=4)
    assert isinstance(mixed, keras.optimizers.LossScaleOptimizer)
    assert mixed.inner_optimizer.use_ema and mixed.inner_optimizer.gradient_accumulation_steps == 2
    with pytest.raises(RecipeError, match=r"train.ema_momentum must lie in \[0, 1\), received 1.5"):
        recipe(ema_momentum=1.5)
    with pytest.raises(RecipeError, match="train.ema_overwrite_frequency needs train.use_ema"):
        recipe(ema_overwrite_frequency=10)
    with pytest.raises(RecipeError, match="train.gradient_accumulation_steps must be a positive integer.*0"):
        recipe(gradient_accumulation_steps=0)
    with pytest.raises(RecipeError, match="train.sync_batchnorm: expected true/false"):
        recipe(sync_batchnorm="yes")


def test_ema_weights_follow_the_formula_and_are_what_evaluation_and_saving_see(tmp_path):
    """3 batches, ema_momentum 0.5: Keras' average after batch t is e_1 = w_1 (the first
    update copies), e_t = 0.5 e_(t-1) + 0.5 w_t, with w_t the raw weights after batch t.
    Callbacks after EMAWeights (the evaluation, best.keras) see e_3 at the epoch end, and
    so does the model after fit and the .keras file saved from it; the raw w_3 differs."""
    model = tiny_model()
    images, y = batches(6)
    optimizer = build.build_optimizer(recipe(use_ema=True, ema_momentum=0.5), steps_per_epoch=3)
    before, after = WeightsAfterEachBatch(), WeightsAfterEachBatch()
    fit(model, optimizer, images, y, batch_size=2, callbacks=[before, EMAWeights(), after])
    w1, w2, w3 = before.per_batch
    expected = [0.5 * (0.5 * a + 0.5 * b) + 0.5 * c for a, b, c in zip(w1, w2, w3)]
    assert_weights_close(after.at_epoch_end, expected)
    final = [np.array(v) for v in model.trainable_variables]
    assert_weights_close(final, expected)
    moved = max(float(np.max(np.abs(e - w))) for e, w in zip(expected, w3))
    assert moved > 1e-4  # the average is not the last weights
    path = str(tmp_path / "ema.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert_weights_close([np.array(v) for v in loaded.trainable_variables], final, rtol=0, atol=0)


def test_gradient_accumulation_of_two_batches_equals_one_step_on_both():
    """k=2 over batches a, b (2 images each) = one SGD step on a+b (4 images): the
    RetinaNet loss is normalised by the batch's positive anchors, and a and b have the
    same number, so the mean of the two batches' gradients is the 4-image gradient
    (with unequal counts it is a mean of per-batch means, not the big batch's). Batch a
    changes no weight and leaves optimizer.iterations at 0; after b it is 1 and
    the update used the schedule at batch count 1 (Keras reads it at the raw counter):
    here 0.01 from a step schedule that is 0.1 at batch 0. Tolerance: rtol 1e-5 / atol 1e-6."""
    images, y = batches(4)
    initial = tiny_model().get_weights()

    model = tiny_model()
    model.set_weights(initial)
    w0 = [np.array(v) for v in model.trainable_variables]
    cfg = recipe(gradient_accumulation_steps=2, learning_rate=0.1, schedule="step", lr_steps=[1])
    optimizer = build.build_optimizer(cfg, steps_per_epoch=2)
    assert float(optimizer._learning_rate(0)) == pytest.approx(0.1)
    assert float(optimizer._learning_rate(1)) == pytest.approx(0.01)
    record = WeightsAfterEachBatch()
    fit(model, optimizer, images, y, batch_size=2, callbacks=[record])
    assert record.updates == [0, 1]
    assert schedules.batches_trained(model.optimizer) == 2
    assert_weights_close(record.per_batch[0], w0, rtol=0, atol=0)  # accumulating only
    accumulated = record.per_batch[1]

    single = tiny_model()
    single.set_weights(initial)
    fit(single, keras.optimizers.SGD(0.01), images, y, batch_size=4)
    expected = [np.array(v) for v in single.trainable_variables]
    update = np.sqrt(sum(float(np.sum((e - w) ** 2)) for e, w in zip(expected, w0)))
    assert update > 1e-3  # the step moved the weights
    assert_weights_close(accumulated, expected)


def test_sync_batchnorm_finds_the_trainable_batchnorm_layers():
    """train.sync_batchnorm marks the trainable BatchNormalization layers (small_resnet's)
    and no frozen one; a model without any is a RecipeError; model files are saved with
    synchronized=False (a JAX-backend Keras refuses synchronized=True)."""
    from fpn_keras import distribute

    model = build.build_model(recipe(sync_batchnorm=True))
    synced = [layer for layer in model._flatten_layers()
              if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized]
    assert synced and all(layer.trainable for layer in synced)
    with distribute.batchnorm_unsynchronized(model):
        assert not any(layer.synchronized for layer in synced)
        config = keras.saving.serialize_keras_object(model)
    assert all(layer.synchronized for layer in synced)
    assert '"synchronized": true' not in str(config).replace("'", '"').replace("True", "true")

    frozen = recipe(sync_batchnorm=True)  # torchvision's ResNet-18: FrozenBatchNorm throughout
    frozen.model.backbone, frozen.model.backbone_args = "torchvision_resnet18", {}
    with pytest.raises(RecipeError, match="no trainable BatchNormalization layer"):
        build.build_model(frozen)


class Stop(Exception):
    pass


class StopAfter(keras.callbacks.Callback):
    """Raises Stop after batch `step` (its checkpoint already written: listed after the Checkpointer)."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if schedules.batches_trained(self.model.optimizer) == self.step:
            raise Stop()


def test_training_with_ema_and_accumulation_saves_the_averages_and_resumes_exactly(tmp_path):
    """tiny_recipe (2 epochs x 4 batches, checkpoints at batches 3, 4, 6, 8) with use_ema and
    gradient_accumulation_steps=2 (4 updates): model.keras and best.keras hold the
    optimizer's averages, the last checkpoint (step 8: batches) the raw weights (different)
    and the same averages. Stopped after batch 3 (mid-accumulation: the checkpoint holds the
    accumulated gradient) and resumed (the partial epoch is a fit of its own, which Keras
    ends by copying the averages into the model), the run ends with the uninterrupted
    run's raw and averaged weights."""
    from fpn_keras import training

    settings = {"use_ema": True, "ema_momentum": 0.8, "gradient_accumulation_steps": 2}
    whole_dir, run_dir = str(tmp_path / "whole"), str(tmp_path / "run")
    whole, _ = training.train(tiny_recipe(**settings), whole_dir, verbose=0)
    saved = keras.saving.load_model(os.path.join(whole_dir, "model.keras"))
    best = keras.saving.load_model(os.path.join(whole_dir, "best.keras"))  # evaluated at the last epoch
    averages_in_model = [np.array(v) for v in saved.trainable_variables]
    with open(os.path.join(whole_dir, "metrics.json")) as f:
        record = __import__("json").load(f)
    assert (record["optimizer_steps"], record["optimizer_updates"]) == (8, 4)
    assert_weights_close([np.array(v) for v in whole.trainable_variables], averages_in_model, rtol=0, atol=0)
    assert_weights_close([np.array(v) for v in best.trainable_variables], averages_in_model, rtol=0, atol=0)

    def checkpoint_state(out):
        model = keras.saving.load_model(os.path.join(out, "model.keras"))
        with open(os.path.join(out, "checkpoints", "checkpoint.json")) as f:
            state = __import__("json").load(f)
        assert state["step"] == 8
        model.load_weights(os.path.join(out, "checkpoints", state["path"]))
        return ([np.array(v) for v in model.trainable_variables],
                [np.array(v) for v in model.optimizer._model_variables_moving_average])

    raw, averages = checkpoint_state(whole_dir)
    # Keras' SwapEMAWeights swaps by additions (a += b; b = a - b; a -= b): rounding only.
    assert_weights_close(averages, averages_in_model, rtol=1e-6, atol=1e-9)
    assert max(float(np.max(np.abs(a - r))) for a, r in zip(averages, raw)) > 1e-4

    with pytest.raises(Stop):
        training.train(tiny_recipe(**settings), run_dir, verbose=0, callbacks=[StopAfter(3)])
    resumed, _ = training.train(tiny_recipe(**settings), run_dir, verbose=0, resume=True)
    resumed_raw, resumed_averages = checkpoint_state(run_dir)
    assert_weights_close(resumed_raw, raw)
    assert_weights_close(resumed_averages, averages)
    assert_weights_close([np.array(v) for v in resumed.trainable_variables], averages_in_model)


def test_accumulation_under_several_replicas_is_refused_before_any_data_is_read(tmp_path, monkeypatch):
    """Keras 3.15 cannot accumulate under a multi-replica tf.distribute strategy
    (keras-team/keras#20582): training.train says so at once and writes nothing."""
    import types

    from fpn_keras import training

    fake = types.SimpleNamespace(num_replicas_in_sync=2)
    monkeypatch.setattr(training.distribute, "strategy", lambda spec: fake)
    monkeypatch.setattr(training, "build_datasets", lambda recipe: pytest.fail("data read"))
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=2 does not run under the 2 replicas.*20582"):
        training.train(tiny_recipe(gradient_accumulation_steps=2), str(tmp_path / "run"), verbose=0)
    assert not os.path.exists(tmp_path / "run")
