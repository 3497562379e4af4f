"""Reproduces, without fpn_keras' workarounds, each Keras / TensorFlow behaviour that
`fpn_keras.keras_workarounds` works around (run by tests/test_keras_workarounds.py in
subprocesses: logical devices and TF_CONFIG must be set before TensorFlow starts).

    python keras_upstream.py predict_on_batch             2 logical CPUs, MirroredStrategy
    TF_CONFIG=... python keras_upstream.py fit WORKAROUNDS  one of 2 local MWMS workers;
        WORKAROUNDS: "none", "skip_data_build" or "skip_data_build,rank1_logs"

    python keras_upstream.py at_lookup none|warm       two tf.data iterators looking elements
        up with tf.data.experimental.at (fpn_keras.data.epochs), without / with `epochs.warm`

Prints one line "RESULT ..." that the test reads.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def predict_on_batch():
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from fpn_keras import keras_workarounds

    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        inputs = keras.Input((4,))
        model = keras.Model(inputs, {"scores": keras.layers.Dense(2)(inputs)})  # dict outputs, as ours
    raw = model.predict_on_batch(np.zeros((3, 4), "float32"))["scores"].shape[0]
    keras_workarounds.trim_replicated_predictions(model)
    trimmed = model.predict_on_batch(np.zeros((3, 4), "float32"))["scores"].shape[0]
    print(f"RESULT rows={raw} trimmed={trimmed}")


def at_lookup(warm):
    from fpn_keras.data import epochs

    source = tf.data.Dataset.from_tensor_slices(tf.range(10)).map(lambda i: i * 2)
    if warm:
        epochs.warm(source, [0])
    runs = []
    for _ in range(2):  # the second iterator's lookup crashes unless the map was warmed
        lookups = tf.data.Dataset.range(3).map(lambda position: tf.data.experimental.at(source, position))
        runs.append([int(v) for v in lookups])
    print(f"RESULT runs={runs}", flush=True)


def fit(workarounds):
    import keras

    from fpn_keras import keras_workarounds

    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            return keras.ops.mean((y_pred - y) ** 2)  # the loss is the model's, as in FPNDetector

    with strategy.scope():
        model = Tiny()
        model(np.zeros((1, 3), "float32"))  # built before fit, as fpn_keras.training does
        model.compile("sgd")
    for name in filter(None, workarounds.split(",")):
        if name == "skip_data_build":
            keras_workarounds.skip_data_build(model, strategy)
        elif name == "rank1_logs":
            keras_workarounds.rank1_logs(model)
    data = tf.data.Dataset.from_tensors((np.ones((4, 3), "float32"), np.ones((4, 1), "float32"))).repeat(2)
    try:
        model.fit(data, epochs=1, verbose=0)
        print("RESULT ok")
    except Exception as error:  # the upstream failure is what is being checked
        print("RESULT error " + " ".join(str(error).split())[:300])


if __name__ == "__main__":
    if sys.argv[1] == "predict_on_batch":
        predict_on_batch()
    elif sys.argv[1] == "at_lookup":
        at_lookup(sys.argv[2] == "warm")
    else:
        fit(sys.argv[2] if sys.argv[2] != "none" else "")
