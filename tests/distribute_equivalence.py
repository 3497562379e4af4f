"""One SGD step under MirroredStrategy (2 logical CPUs) vs one step on one device.

Run as a script (tests/test_distribute.py does, in a subprocess): logical devices
must be configured before TensorFlow initialises its devices. Prints one JSON line.

The global batch has 4 images; tf.distribute gives images 0-1 to replica 0 and
2-3 to replica 1. Replica 0's images hold 1 box each, replica 1's 3 boxes each,
so the replicas see different numbers of positive anchors: a per-replica
normaliser would give different gradients (the "per_replica" run measures how much).

--trainable-batchnorm: small_resnet's BatchNormalization layers train (batch
statistics per replica: 2 images each); --sync-batchnorm: the same, synchronized
(train.sync_batchnorm): statistics of the global batch of 4, as on one device. Both
also compare the BatchNorm moving statistics.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import equivalence_data  # noqa: E402

from fpn_keras import distribute  # noqa: E402
from fpn_keras.models.backbones import small_resnet  # noqa: E402
from fpn_keras.models.detector import FPNDetector  # noqa: E402
from fpn_keras.models.retinanet import RetinaNet  # noqa: E402

SIZE = 64
LR = 0.05


TRAINABLE_BN = "--trainable-batchnorm" in sys.argv or "--sync-batchnorm" in sys.argv


def tiny_model():
    keras.utils.set_random_seed(7)
    backbone = small_resnet((8, 16, 32, 64))
    for layer in backbone.layers:  # frozen BN: per-replica batch statistics would differ
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = TRAINABLE_BN
    model = FPNDetector(
        num_classes=3, backbone=backbone, fpn_channels=16,
        head=RetinaNet(num_classes=3, min_level=3, max_level=5, anchor_scale=2.0, channels=16,
                       num_convs=1, name="head"))
    model(np.zeros((1, SIZE, SIZE, 3), "float32"))
    return model


def data():
    return equivalence_data.data(SIZE)


def one_step(strategy, initial_weights):
    images, y = data()
    with strategy.scope():
        model = tiny_model()
        model.set_weights(initial_weights)
        if "--sync-batchnorm" in sys.argv:  # train.sync_batchnorm
            distribute.set_batchnorm_synchronized(model, True)
        model.compile(optimizer=keras.optimizers.SGD(LR, momentum=0.0))
    ds = tf.data.Dataset.from_tensor_slices((images, y)).batch(4, drop_remainder=True)
    history = model.fit(ds, epochs=1, verbose=0).history
    weights = [np.asarray(w) for w in model.trainable_weights]
    if TRAINABLE_BN:  # and the BatchNorm moving statistics
        weights += [np.asarray(w) for w in model.non_trainable_weights]
    return {k: float(v[-1]) for k, v in history.items()}, weights


def compare(reference, weights, initial):
    rel = max(float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-6))) for a, b in zip(weights, reference))
    # Relative error of the update itself (weights - initial), over all variables.
    diff = np.sqrt(sum(float(np.sum(((a - w0) - (b - w0)) ** 2)) for a, b, w0 in zip(weights, reference, initial)))
    norm = np.sqrt(sum(float(np.sum((b - w0) ** 2)) for b, w0 in zip(reference, initial)))
    # Weights within rtol 1e-5 plus atol 1e-6 for weights near 0 (np.allclose's test).
    allclose = all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(weights, reference))
    max_abs = max(float(np.max(np.abs(a - b))) for a, b in zip(weights, reference))
    return rel, diff / norm, max_abs, allclose


def main():
    images, y = data()
    initial = tiny_model()
    initial_weights = initial.get_weights()
    trainable0 = [np.asarray(w) for w in initial.trainable_weights]
    if TRAINABLE_BN:
        trainable0 += [np.asarray(w) for w in initial.non_trainable_weights]
    # Positives per replica half, to show the halves differ.
    raw = initial(images)
    gt_boxes, gt_labels = initial._prepare_targets(y, SIZE, SIZE)
    from fpn_keras.targets import label_anchors

    anchors = initial.head.concat_levels(raw["anchors"], axis=0)
    cls_targets, _ = label_anchors(anchors, gt_boxes, gt_labels, initial.head.matcher)
    positives = np.sum(np.asarray(cls_targets) >= 0, axis=1)

    single_logs, single = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), initial_weights)
    if "--per-replica-normaliser" in sys.argv:
        # The same step with per-replica normalisers (global_sum disabled): the bug
        # the test guards against must show as a clear difference. (Without the
        # correct run: two MirroredStrategy runs with different collectives in one
        # process confuse the collective instance keys.)
        distribute.global_sum = lambda value: keras.ops.stop_gradient(value)
        logs, buggy = one_step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), initial_weights)
        print(json.dumps({"single_loss": single_logs["loss"], "mirrored_loss": logs["loss"], **dict(zip(
            ("max_rel_weight_diff", "update_rel_diff", "max_abs_weight_diff", "weights_allclose"),
            compare(buggy, single, trainable0)))}))
        return 0
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored_logs, multi = one_step(mirrored, initial_weights)
    rel, update_rel, max_abs, allclose = compare(multi, single, trainable0)

    result = {
        "replicas": mirrored.num_replicas_in_sync,
        "positives_per_image": positives.tolist(),
        "single_loss": single_logs["loss"], "mirrored_loss": mirrored_logs["loss"],
        "single_logs": single_logs, "mirrored_logs": mirrored_logs,
        "max_rel_weight_diff": rel, "update_rel_diff": update_rel,
        "max_abs_weight_diff": max_abs, "weights_allclose": allclose,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
