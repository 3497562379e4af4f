"""One SGD step under keras.distribution.DataParallel over 2 JAX devices vs one device.

Run by tests/test_distribute.py in a subprocess with KERAS_BACKEND=jax (the backend
and XLA's host device count are fixed at import): XLA_FLAGS gets
--xla_force_host_platform_device_count=2, so this CPU shows 2 JAX devices. TensorFlow
is made unimportable first, as on the GPU machine. Prints one JSON line.

The global batch of 4 is split 2 + 2 over the devices; images 0-1 hold 1 box each,
2-3 three each (different positive counts per device), and small_resnet's
BatchNormalization layers train. Under JAX's SPMD data parallelism the program is the
one-device program on a sharded array: sums, the positives normaliser and the
BatchNorm statistics are over the global batch without any cross-replica helper
(fpn_keras.distribute's helpers are the identity under JAX), so loss, weights and
moving statistics should equal one device's within float tolerance.
"""

import sys

sys.modules["tensorflow"] = None  # as on the GPU machine: `import tensorflow` raises

import json  # noqa: E402
import os  # noqa: E402

os.environ["KERAS_BACKEND"] = "jax"
# 2 host devices; fast XLA compiles (the initializers and two train steps compile here,
# 20 s instead of 47 s on this machine; both runs use the same flags).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
                           " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


def tiny_model():
    keras.utils.set_random_seed(7)
    model = FPNDetector(
        num_classes=3, backbone=small_resnet((8, 16, 32, 64)), fpn_channels=16,
        head=RetinaNet(num_classes=3, min_level=3, max_level=5, anchor_scale=2.0, channels=16,
                       num_convs=1, name="head"))
    model(keras.KerasTensor((1, SIZE, SIZE, 3)))  # builds the variables symbolically (eager JAX is slow)
    return model


def data():
    return equivalence_data.data(SIZE)


def one_step(initial_weights):
    images, y = data()
    model = tiny_model()
    model.set_weights(initial_weights)
    model.compile(optimizer=keras.optimizers.SGD(LR, momentum=0.0))
    history = model.fit(images, y, batch_size=4, epochs=1, verbose=0, shuffle=False).history
    return model, {k: float(v[-1]) for k, v in history.items()}, [np.asarray(w) for w in model.weights]


def main():
    import jax

    initial = tiny_model().get_weights()
    _, single_logs, single = one_step(initial)

    distribution = distribute.jax_data_parallel()
    model, parallel_logs, parallel = one_step(initial)
    kernel = model.head.trainable_weights[0]
    sharding = getattr(kernel.value, "sharding", None)

    diff = np.sqrt(sum(float(np.sum(((a - w0) - (b - w0)) ** 2)) for a, b, w0 in zip(parallel, single, initial)))
    norm = np.sqrt(sum(float(np.sum((b - w0) ** 2)) for b, w0 in zip(single, initial)))
    print(json.dumps({
        "backend": keras.backend.backend(), "tensorflow_loaded": sys.modules.get("tensorflow") is not None,
        "devices": [str(d) for d in jax.devices()],
        "distribution": type(distribution).__name__,
        "mesh_devices": int(np.prod(distribution.device_mesh.shape)),
        "variable_devices": len(sharding.device_set) if sharding is not None else None,
        "single_loss": single_logs["loss"], "parallel_loss": parallel_logs["loss"],
        "single_logs": single_logs, "parallel_logs": parallel_logs,
        "weights_allclose": all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(parallel, single)),
        "max_abs_weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(parallel, single)),
        "update_rel_diff": diff / norm, "update_norm": norm,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
