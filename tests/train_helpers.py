"""A tiny training recipe for the training tests, and a script that trains it and
SIGKILLs itself after a given optimizer step (tests/test_training.py runs it in a
subprocess to interrupt a run for real).

    python tests/train_helpers.py OUT_DIR KILL_AT_STEP [--resume] [--kill-in-save STEP] [--keep N]

--kill-in-save STEP: SIGKILL in the middle of writing the checkpoint of STEP (half
the file written). --keep N: train.keep_checkpoints. --augment: scale jitter [0.8, 1.25]
and brightness 0.2 (as tests/test_training.py's data-resume test).
"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from fpn_keras.config import recipe_from_dict  # noqa: E402


def tiny_recipe(**train):
    """RetinaNet on a small_resnet (16..128 wide; width 8 at 128x128 crashes oneDNN in TF 2.21) and 128x128 synthetic images (the pipeline's minimum):
    8 train images in batches of 2 -> 4 steps per epoch, 2 epochs."""
    settings = {"batch_size": 2, "epochs": 2, "optimizer": "sgd", "learning_rate": 0.01,
                "momentum": 0.9, "weight_decay": 1e-4, "warmup_steps": 2, "schedule": "step",
                "eval_every_n_epochs": 100, "checkpoint_every_n_steps": 3, "strategy": "default"}
    settings.update(train)
    return recipe_from_dict({
        "model": {"num_classes": 4, "backbone": "small_resnet",
                  "backbone_args": {"widths": [16, 32, 64, 128]}, "fpn_channels": 16,
                  "head": "retinanet",
                  "head_args": {"min_level": 3, "max_level": 5, "anchor_scale": 2.0, "channels": 16,
                                "num_convs": 1}},
        "data": {"train": "synthetic", "val": "synthetic", "image_size": [128, 128],
                 "num_train_images": 8, "num_val_images": 2, "max_boxes": 6},
        "train": settings,
    }, source="tiny_recipe")


class KillAt(keras.callbacks.Callback):
    """SIGKILLs this process right after optimizer step `step` (no cleanup, no flush)."""

    def __init__(self, step):
        super().__init__()
        self.step = int(step)

    def on_train_batch_end(self, batch, logs=None):
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _option(argv, name, default=None):
    return int(argv[argv.index(name) + 1]) if name in argv else default


def kill_in_save(step):
    """Makes the checkpoint write of optimizer step `step` die half-way (SIGKILL)."""
    original = keras.Model.save_weights

    def save_weights(self, filepath, *args, **kwargs):
        if int(keras.ops.convert_to_numpy(self.optimizer.iterations)) == step:
            original(self, filepath, *args, **kwargs)
            size = os.path.getsize(filepath)
            with open(filepath, "r+b") as f:
                f.truncate(size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, filepath, *args, **kwargs)

    keras.Model.save_weights = save_weights


def main(argv):
    from fpn_keras import training

    out_dir, kill_at = argv[0], int(argv[1])
    if "--kill-in-save" in argv:
        kill_in_save(_option(argv, "--kill-in-save"))
    recipe = tiny_recipe(keep_checkpoints=_option(argv, "--keep", 3))
    if "--augment" in argv:
        recipe.data.augment = {"scale_range": [0.8, 1.25], "brightness": 0.2}
    training.train(recipe, out_dir, verbose=0, resume="--resume" in argv,
                   callbacks=[KillAt(kill_at)] if kill_at > 0 else ())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
