"""Distribution strategies and the cross-replica helpers the losses need.

`strategy(spec)` turns a recipe / command-line string into a `tf.distribute`
strategy. Build the model, optimizer and metrics inside `strategy.scope()`;
`model.fit` then splits each global batch across the replicas.

How Keras 3 (TensorFlow backend) trains under a strategy, and why the losses
call `global_sum`: every replica computes its loss on its share of the batch,
takes gradients, and the optimizer SUMS the replicas' gradients
(`_all_reduce_sum_gradients`). Keras' own losses therefore scale a
per-replica mean by 1 / num_replicas. A detection loss is a sum over anchors
divided by a count (positive anchors, sampled anchors or RoIs); dividing each
replica's sum by the GLOBAL count (all-reduced over replicas) makes the summed
gradient exactly the single-device gradient of the global batch, whatever the
replicas' shares of positives. Outside a replica context (eager code, one
device, the JAX / PyTorch backends) the helpers are the identity.
"""

import contextlib
import json
import os

import keras

SPECS = ("auto", "default", "mirrored", "multi_worker", "tpu", "one_device:<device>")


def _tf():
    import tensorflow as tf

    return tf


def num_workers():
    """Workers named in TF_CONFIG (chief included); 1 without TF_CONFIG."""
    return max(1, _tf_config_workers())


def _tf_config_workers():
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from error
    cluster = config.get("cluster") or {}
    return len(cluster.get("worker", ())) + len(cluster.get("chief", ()))


def _find_tpu():
    """A TPU cluster resolver when this host looks like it has a TPU, else None.

    Only probes when TPU_NAME / COLAB_TPU_ADDR is set or /dev/accel* exists (a TPU
    VM), so that "auto" never waits on a cloud metadata server elsewhere."""
    import glob

    tpu = os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")
    if not tpu and not glob.glob("/dev/accel*"):
        return None
    tf = _tf()
    try:
        return tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "local")
    except (ValueError, RuntimeError, KeyError, tf.errors.OpError):
        return None


def _tpu_strategy(resolver=None):
    tf = _tf()
    resolver = resolver or tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=os.environ.get("TPU_NAME") or "local")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def strategy(spec="auto"):
    """A `tf.distribute.Strategy` from a spec string (or the strategy itself).

    auto: TPUStrategy when a TPU is found, MultiWorkerMirroredStrategy when
    TF_CONFIG names several workers, MirroredStrategy with several GPUs,
    otherwise the default (one-device, no-op) strategy. Explicit: "default",
    "mirrored", "multi_worker", "tpu", "one_device:/gpu:0" (any device name).
    """
    tf = _tf()
    if isinstance(spec, tf.distribute.Strategy):
        return spec
    if spec is None:
        spec = "auto"
    if not isinstance(spec, str):
        raise ValueError(f"strategy must be a string, one of {list(SPECS)}; received {spec!r}")
    name = spec.strip().lower()
    if name == "auto":
        resolver = _find_tpu()
        if resolver is not None:
            return _tpu_strategy(resolver)
        if _tf_config_workers() > 1:
            return tf.distribute.MultiWorkerMirroredStrategy()
        if len(tf.config.list_logical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name in ("multi_worker", "multiworker", "multi_worker_mirrored"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy()
    if name.startswith("one_device:") and len(spec.split(":", 1)[1].strip()) > 0:
        return tf.distribute.OneDeviceStrategy(spec.split(":", 1)[1].strip())
    raise ValueError(f"unknown strategy {spec!r}; allowed: {list(SPECS)}")


def jax_data_parallel(devices=None):
    """Data-parallel training under the JAX backend: sets and returns
    `keras.distribution.DataParallel` over `devices` (default: every JAX device, e.g.
    all GPUs). Call it before building the model (its variables are then replicated on
    every device); `fit` shards each global batch over the devices' batch axis.

    No loss helper is needed there: JAX runs the one-device program on sharded arrays
    (SPMD), so the positives normaliser and BatchNormalization statistics are those of
    the global batch (tests/jax_data_parallel_check.py: the same step as one device).
    The tf.distribute strategies above are for the TensorFlow backend; this is their
    JAX counterpart (`fpn_keras.training.train` builds tf.data + tf.distribute, so the
    recipe trainer stays on TensorFlow)."""
    if keras.backend.backend() != "jax":
        raise ValueError(f"jax_data_parallel needs KERAS_BACKEND=jax, the backend is {keras.backend.backend()!r}; "
                         "under TensorFlow use a tf.distribute strategy (e.g. 'mirrored')")
    distribution = keras.distribution.DataParallel(devices=devices or keras.distribution.list_devices())
    keras.distribution.set_distribution(distribution)
    return distribution


def _replica_context():
    """The TF replica context when several replicas train in sync, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    tf = _tf()
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def num_replicas_in_sync():
    """Replicas of the current TF strategy (1 outside TF / without a strategy)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    return _tf().distribute.get_strategy().num_replicas_in_sync


def global_sum(value):
    """Sum of `value` over all replicas in sync (identity with one replica).

    For counts used as loss normalisers (no gradient flows through them)."""
    context = _replica_context()
    value = keras.ops.stop_gradient(value)
    if context is None:
        return value
    return context.all_reduce("sum", value)


def scale_for_replicas(value):
    """value / num_replicas: for per-replica terms (regularisers) that every
    replica adds in full, so their summed gradient counts them once."""
    replicas = num_replicas_in_sync()
    return value if replicas <= 1 else value * (1.0 / replicas)


def unscale_for_replicas(value):
    """value * num_replicas: what a per-replica share of a globally-normalised
    loss is logged as, so that the metric's mean over replicas gives the global loss."""
    replicas = num_replicas_in_sync()
    return value if replicas <= 1 else value * float(replicas)


def set_batchnorm_synchronized(model, synchronized=True):
    """Sets `synchronized` on every trainable keras BatchNormalization layer of `model`
    (a frozen one, `trainable=False`, runs in inference mode and needs no batch
    statistics; FrozenBatchNorm and GroupNormalization have none) -> their names.

    Synchronized (TensorFlow backend): in a training call under a multi-replica
    strategy, mean and variance are all-reduced over the replicas, so they are the
    global batch's (Keras' `ops.moments(synchronized=True)`); with one replica it is the
    ordinary BatchNormalization. Keras reads the flag when it traces the train step, and
    stores it in the layer's config, which a JAX-backend Keras refuses to load: save
    with `synchronized=False` (`fpn_keras.training` does)."""
    names = []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            layer.synchronized = bool(synchronized)
            names.append(layer.name)
    return names


@contextlib.contextmanager
def batchnorm_unsynchronized(model):
    """Inside the block every synchronized BatchNormalization of `model` is an ordinary
    one (for saving a .keras file that any backend loads; a traced train step keeps
    its synchronized statistics)."""
    layers = [layer for layer in model._flatten_layers(include_self=False)
              if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized]
    for layer in layers:
        layer.synchronized = False
    try:
        yield
    finally:
        for layer in layers:
            layer.synchronized = True


def is_chief():
    """True on the worker that should write files (always true without TF_CONFIG)."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError:
        return True
    task = config.get("task") or {}
    cluster = config.get("cluster") or {}
    kind, index = task.get("type"), int(task.get("index", 0))
    if kind is None or kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in cluster
