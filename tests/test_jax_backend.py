"""The model code is keras.ops only: RetinaNet and Faster R-CNN train and predict under JAX.

Runs tests/jax_backend_check.py in a subprocess, since the backend is fixed at import;
that script makes TensorFlow unimportable (sys.modules["tensorflow"] = None) before
anything else, as on the GPU machine, which has no TensorFlow.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_retinanet_and_faster_rcnn_under_keras_backend_jax():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, os.path.join(HERE, "jax_backend_check.py"), "64", "8"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["head"] for r in rows] == ["retinanet", "faster_rcnn"]
    for row in rows:
        assert row["backend"] == "jax"
        assert row["tensorflow_loaded"] is False, row
        assert row["jit_compile"] is True, row  # compile()'s "auto": op by op is 16x slower under JAX
        assert np.isfinite(row["fit_loss"]) and row["fit_loss"] > 0, row
        assert row["last_loss"] < row["first_loss"], row
        assert row["boxes_shape"] == [2, 100, 4] and row["finite"], row
