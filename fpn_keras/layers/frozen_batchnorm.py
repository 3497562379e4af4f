"""FrozenBatchNorm: BatchNorm with fixed statistics and affine parameters.

As torchvision's `ops.misc.FrozenBatchNorm2d` (its detection models' backbone
norm): y = x * scale + shift with scale = gamma / sqrt(moving_variance + epsilon)
and shift = beta - moving_mean * scale, per channel (last axis, channels_last).
All four weights are non-trainable and carry Keras BatchNormalization's names
(gamma, beta, moving_mean, moving_variance), so a converter sets them as it sets
a BatchNormalization's; training never changes them.
"""

import keras
from keras import layers, ops

WEIGHT_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")


@keras.saving.register_keras_serializable(package="fpn_keras")
class FrozenBatchNorm(layers.Layer):
    """[..., C] -> [..., C]: a fixed per-channel affine map (see the module docstring).

    Args:
        epsilon: added to the variance (1e-5: torchvision's FrozenBatchNorm2d
            and nn.BatchNorm2d; Keras' BatchNormalization defaults to 1e-3).
    """

    def __init__(self, epsilon=1e-5, **kwargs):
        kwargs.setdefault("autocast", False)  # scale and shift in float32 under mixed precision
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"FrozenBatchNorm needs a known channel count, received shape {input_shape}")
        initial = {"gamma": "ones", "beta": "zeros", "moving_mean": "zeros", "moving_variance": "ones"}
        for name in WEIGHT_NAMES:
            setattr(self, name, self.add_weight(shape=(channels,), initializer=initial[name],
                                                trainable=False, name=name))

    def call(self, x):
        scale = self.gamma * ops.rsqrt(self.moving_variance + self.epsilon)
        shift = self.beta - self.moving_mean * scale
        return x * ops.cast(scale, x.dtype) + ops.cast(shift, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
