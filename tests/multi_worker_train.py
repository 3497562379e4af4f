"""One worker of a MultiWorkerMirroredStrategy run (tests/test_distribute.py starts two).

    TF_CONFIG=... python tests/multi_worker_train.py OUT_DIR

Trains the tiny recipe of tests/train_helpers.py with `fpn_keras.training.train`
under strategy "auto" (which must pick MultiWorkerMirroredStrategy from TF_CONFIG)
and prints one JSON line: the strategy, replicas, optimizer steps and a checksum
of the final weights (equal on both workers when they trained in sync).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from fpn_keras import distribute, training  # noqa: E402
from train_helpers import tiny_recipe  # noqa: E402


def main(out_dir):
    strategy = distribute.strategy("auto")
    recipe = tiny_recipe(batch_size=4, epochs=1, checkpoint_every_n_steps=1, eval_every_n_epochs=1)
    model, _ = training.train(recipe, out_dir, verbose=0, strategy=strategy)
    checksum = float(sum(np.sum(np.abs(np.asarray(w, "float64"))) for w in model.trainable_weights))
    print(json.dumps({"strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
                      "chief": distribute.is_chief(), "checksum": checksum,
                      "steps": int(np.asarray(model.optimizer.iterations))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
