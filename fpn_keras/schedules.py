"""Learning-rate schedules saved with the optimizer in .keras files.

Imported by `fpn_keras.models.detector`, so that loading any saved detector
finds them (`keras.saving.load_model` needs registered classes).
"""

import keras
from keras import ops


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
