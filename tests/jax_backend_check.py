"""Runs a tiny FPNDetector (RetinaNet and Faster R-CNN) under KERAS_BACKEND=jax.

Used by tests/test_jax_backend.py in a subprocess (the backend is chosen at
import time) and by the GPU check. Needs only keras, jax and numpy: no TensorFlow.
Prints one JSON line per head.
"""

import sys

# Before anything else: TensorFlow is made unimportable, as on the GPU machine.
# `import tensorflow` (by us or by Keras) now raises ImportError.
sys.modules["tensorflow"] = None

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fpn_keras  # noqa: E402
from fpn_keras import FasterRCNN, FPNDetector, RetinaNet, RPN  # noqa: E402
from fpn_keras.models.backbones import small_resnet  # noqa: E402


def make(head_name, size):
    if head_name == "retinanet":
        head = RetinaNet(num_classes=3, min_level=3, max_level=5, anchor_scale=2.0, channels=16,
                         num_convs=1, name="head")
    else:
        rpn = RPN(anchor_scale=4.0, pre_nms_topk_train=300, post_nms_topk_train=200,
                  pre_nms_topk_test=200, post_nms_topk_test=100, batch_size_per_image=64, seed=1, name="rpn")
        head = FasterRCNN(num_classes=3, rpn=rpn, fc_dim=64, batch_size_per_image=64, seed=2, name="head")
    return FPNDetector(backbone=small_resnet((8, 16, 32, 64)), head=head, fpn_channels=16)


def main():
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    assert keras.backend.backend() == "jax"
    import jax

    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    s = size / 64.0
    y = {"boxes": (np.array([[[8, 8, 40, 30], [30, 20, 60, 60]]] * 2) * s).astype("float32"),
         "labels": np.array([[0, 2]] * 2, "int32")}
    for head_name in ("retinanet", "faster_rcnn"):
        keras.utils.set_random_seed(0)
        model = make(head_name, size)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        first = model.train_on_batch(x, y, return_dict=True)
        start = time.perf_counter()
        for _ in range(steps - 1):
            last = model.train_on_batch(x, y, return_dict=True)
        step_ms = (time.perf_counter() - start) / max(steps - 1, 1) * 1000
        # model.fit on NumPy arrays (Keras' own array adapter, no tf.data).
        history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
        out = model.predict(x, verbose=0)
        print(json.dumps({
            "fit_loss": float(history.history["loss"][-1]),
            "tensorflow_loaded": sys.modules.get("tensorflow") is not None,
            "jit_compile": bool(model.jit_compile),
            "head": head_name, "backend": keras.backend.backend(), "device": str(jax.devices()[0]),
            "first_loss": float(first["loss"]), "last_loss": float(last["loss"]),
            "train_step_ms": round(step_ms, 1), "boxes_shape": list(out["boxes"].shape),
            "num_detections": [int(n) for n in out["num_detections"]],
            "finite": bool(np.all(np.isfinite(out["scores"]))),
        }), flush=True)


if __name__ == "__main__":
    main()
