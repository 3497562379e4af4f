"""Workarounds for Keras 3 behaviours under tf.distribute, each naming the upstream
behaviour it works around (used by `fpn_keras.training.train`).

tests/test_keras_workarounds.py reproduces each upstream behaviour without the
workaround (Keras 3.15, TF 2.21) and fails once Keras or TensorFlow fixes it: then
delete the workaround and its test."""

import tensorflow as tf


def skip_data_build(model, strategy):
    """Keras' fit first "symbolically builds" the model from a batch it reduces
    across replicas with `strategy.reduce`, which fails under
    MultiWorkerMirroredStrategy (PerReplica -> Tensor). The model is built before
    fit here, so that step needs no data: finish it without any."""
    if not (hasattr(model, "_maybe_symbolic_build") and hasattr(model, "_symbolic_build")):
        raise RuntimeError(f"keras {__import__('keras').__version__} has no Trainer._maybe_symbolic_build: "
                           "fpn_keras.keras_workarounds.skip_data_build needs updating")
    original = model._maybe_symbolic_build

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if not all(layer.built for layer in model._flatten_layers()):
            return original(iterator=iterator, data_batch=data_batch)
        with strategy.scope():
            model._symbolic_build(data_batch=None)  # builds the optimizer, post-build hooks

    model._maybe_symbolic_build = maybe_symbolic_build


def rank1_logs(model):
    """Keras 3 reduces the logs across workers with strategy.reduce("MEAN", v,
    axis=0), which fails on scalars under MultiWorkerMirroredStrategy ("Invalid
    reduction dimension 0 for input with 0 dimensions", tensorflow#72388): give
    it [1]-shaped values (the reduction returns scalars again)."""
    original = model.compute_metrics

    def compute_metrics(*args, **kwargs):
        logs = original(*args, **kwargs)
        return {name: tf.reshape(value, (1,)) if tf.is_tensor(value) and value.shape.rank == 0 else value
                for name, value in logs.items()}

    model.compute_metrics = compute_metrics


def trim_replicated_predictions(model):
    """Under a multi-replica strategy Keras' predict_on_batch runs the whole batch
    on every replica and concatenates the replicas' outputs (R x B rows); the first
    B rows are the batch's predictions (evaluation and pictures use those)."""
    original = model.predict_on_batch

    def predict_on_batch(x):
        outputs = original(x)
        batch = int(x.shape[0])
        return {name: value[:batch] for name, value in outputs.items()} if isinstance(outputs, dict) \
            else outputs

    model.predict_on_batch = predict_on_batch
