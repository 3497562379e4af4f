"""Training schedules: how many optimizer steps and epochs a recipe runs (plain
arithmetic), and the learning-rate schedules saved with the optimizer in .keras files.

Imported by `fpn_keras.models.detector`, so that loading any saved detector
finds them (`keras.saving.load_model` needs registered classes).
"""

import keras
from keras import ops

from fpn_keras import config

UNKNOWN_SIZE_EPOCH = 1000  # steps per "epoch" when the training set's size is unknown


def schedule_steps(train_cfg, steps_per_epoch):
    """-> (epochs, steps_per_epoch, total_steps) for `fit` and the LR schedule.

    `steps_per_epoch` is the number of full batches in the training set, or None when
    its size is unknown.
    - `train.steps` unset: `train.epochs` passes over the data, more when
      `train.min_steps` needs them: (epochs, steps_per_epoch, epochs x steps_per_epoch).
    - `train.steps` set (detectron2's MAX_ITER; `min_steps` still a floor): the repeated
      train set in `epochs = ceil(steps / steps_per_epoch)` epochs of `ceil(steps /
      epochs)` steps (about one pass each); the LR schedule spans `steps` and the run
      overshoots it by fewer than `epochs` steps, at the final learning rate.
    - unknown size: `train.steps` is required; "epochs" of min(steps, 1000) batches.
    """
    minimum = train_cfg.min_steps or 0
    if steps_per_epoch is None:
        steps = max(train_cfg.steps or 0, minimum)
        if not steps:
            raise config.RecipeError(
                "the number of training images is unknown, so the length of an epoch is too: "
                "set train.steps (the total number of optimizer steps)")
        steps_per_epoch = min(steps, UNKNOWN_SIZE_EPOCH)
    else:
        steps_per_epoch = int(steps_per_epoch)
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, received {steps_per_epoch!r}")
        if train_cfg.steps is None:
            epochs = max(train_cfg.epochs, -(-minimum // steps_per_epoch))
            return epochs, steps_per_epoch, epochs * steps_per_epoch
        steps = max(train_cfg.steps, minimum)
    epochs = -(-steps // steps_per_epoch)
    return epochs, -(-steps // epochs), steps


def batches_trained(optimizer):
    """The number of batches `fit` has trained on (the data position, the checkpoints'
    step). Keras' `optimizer.iterations` counts updates, which with
    `gradient_accumulation_steps=k` is batches // k; its raw counter (`_iterations`, the
    one the LR schedule reads) counts batches; a LossScaleOptimizer's is its inner one's."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return int(ops.convert_to_numpy(inner._iterations))


def eval_period_epochs(train_cfg, steps_per_epoch):
    """Evaluation period in epochs: train.eval_every_n_steps rounded to whole epochs
    (at least 1) when set, else train.eval_every_n_epochs."""
    if train_cfg.eval_every_n_steps is None:
        return train_cfg.eval_every_n_epochs
    return max(1, int(round(train_cfg.eval_every_n_steps / steps_per_epoch)))


def lr_boundaries(train_cfg, total_steps):
    """The step schedule's boundaries as iteration numbers (LR x0.1 at each)."""
    steps = train_cfg.lr_steps if train_cfg.lr_steps is not None else [2 / 3, 8 / 9]
    if all(s < 1 for s in steps):
        return [int(total_steps * s) for s in steps]
    return [int(s) for s in steps]


@keras.saving.register_keras_serializable(package="fpn_keras")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then x`gamma` at each boundary (detectron2's WarmupMultiStepLR).

    lr(step) = learning_rate * gamma ** (number of boundaries <= step) * warmup(step),
    warmup(step) = warmup_factor + (1 - warmup_factor) * step / warmup_steps while
    step < warmup_steps, else 1. `step` counts optimizer updates from 0.
    """

    def __init__(self, learning_rate, boundaries, warmup_steps=0, warmup_factor=0.001, gamma=0.1,
                 name="warmup_step_decay"):
        super().__init__()
        self.learning_rate = float(learning_rate)
        self.boundaries = [int(b) for b in boundaries]
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.gamma = float(gamma)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        decays = sum((ops.cast(step >= b, "float32") for b in self.boundaries), ops.zeros((), "float32"))
        lr = self.learning_rate * ops.power(self.gamma, decays)
        if self.warmup_steps > 0:
            alpha = ops.minimum(step / self.warmup_steps, 1.0)
            lr = lr * (self.warmup_factor * (1.0 - alpha) + alpha)
        return lr

    def get_config(self):
        return {"learning_rate": self.learning_rate, "boundaries": self.boundaries,
                "warmup_steps": self.warmup_steps, "warmup_factor": self.warmup_factor,
                "gamma": self.gamma, "name": self.name}
