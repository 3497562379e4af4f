"""One worker of a MultiWorkerMirroredStrategy run (tests/test_distribute.py and
tests/test_robustness.py start two).

    TF_CONFIG=... python tests/multi_worker_train.py OUT_DIR
    TF_CONFIG=... python tests/multi_worker_train.py OUT_DIR --cli [--epochs N] [--kill-at STEP] [--resume]

Trains the tiny recipe of tests/train_helpers.py under strategy "auto" (which must
pick MultiWorkerMirroredStrategy from TF_CONFIG). Without --cli: through
`fpn_keras.training.train`, printing one JSON line: the strategy, replicas, optimizer
steps and a checksum of the final weights (equal on both workers when they trained in
sync). With --cli: through `fpn-keras train --recipe <the tiny recipe as YAML> --out
OUT_DIR` (exit status and messages as a user sees them); --kill-at STEP SIGKILLs this
worker right after optimizer step STEP (after its checkpoint callback ran).
"""

import json
import os
import sys
import tempfile

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


def _kill_after(step):
    import signal

    import keras

    from fpn_keras import callbacks

    original = callbacks.Checkpointer.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):
        original(self, batch, logs)
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) >= step:
            os.kill(os.getpid(), signal.SIGKILL)

    callbacks.Checkpointer.on_train_batch_end = on_train_batch_end


def main_cli(out_dir, argv):
    from fpn_keras import cli
    from fpn_keras.config import dump_recipe

    epochs = int(argv[argv.index("--epochs") + 1]) if "--epochs" in argv else 1
    if "--kill-at" in argv:
        _kill_after(int(argv[argv.index("--kill-at") + 1]))
    recipe = tiny_recipe(batch_size=4, epochs=epochs, checkpoint_every_n_steps=1, eval_every_n_epochs=100,
                         strategy="auto")
    path = os.path.join(tempfile.mkdtemp(prefix="fpn_keras_worker_recipe_"), "tiny.yaml")
    dump_recipe(recipe, path)
    return cli.main(["train", "--recipe", path, "--out", out_dir, "--quiet",
                     *(["--resume"] if "--resume" in argv else [])])


if __name__ == "__main__":
    sys.exit(main_cli(sys.argv[1], sys.argv[2:]) if "--cli" in sys.argv else main(sys.argv[1]))
