"""SIGINT mid-epoch, then resume, under `tf.config.experimental.enable_op_determinism()`
(process-wide and irreversible, hence a separate process: tests/test_robustness.py runs it).

    python tests/resume_determinism.py OUT_DIR

Trains the tiny recipe of tests/train_helpers.py (8 steps, augmentation on) once
uninterrupted, once sending itself SIGINT after step 5 (`StopOnSignal` checkpoints the
step in progress and `train` raises TrainingInterrupted) and resuming; prints one JSON
line: the interrupted step, the steps the resumed run trained, the resumed run's
optimizer steps and the largest weight difference from the uninterrupted run.
"""

import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fpn_keras import training  # noqa: E402
from fpn_keras.callbacks import TrainingInterrupted  # noqa: E402
from train_helpers import tiny_recipe  # noqa: E402


def _step(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class SigintAfter(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if _step(self.model) == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class Steps(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_begin(self, batch, logs=None):
        self.steps.append(_step(self.model))


def _recipe():
    recipe = tiny_recipe(checkpoint_every_n_steps=0)
    recipe.data.augment = {"scale_range": [0.8, 1.25], "brightness": 0.2}
    return recipe


def main(out_dir):
    tf.config.experimental.enable_op_determinism()
    whole, _ = training.train(_recipe(), os.path.join(out_dir, "whole"), verbose=0)
    run = os.path.join(out_dir, "run")
    try:
        training.train(_recipe(), run, verbose=0, callbacks=[SigintAfter(5)])
        interrupted = None
    except TrainingInterrupted as error:
        interrupted = error.step
    steps = Steps()
    resumed, _ = training.train(_recipe(), run, verbose=0, resume=True, callbacks=[steps])
    difference = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                     for a, b in zip(whole.weights, resumed.weights))
    print(json.dumps({"interrupted_at": interrupted, "resumed_steps": steps.steps,
                      "optimizer_steps": _step(resumed), "max_difference": difference}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
