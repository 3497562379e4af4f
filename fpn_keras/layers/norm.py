"""The normalisation after a conv in the heads, the FPN and the box head: one constructor.

norm None (no layer), "group" (GroupNorm, 32 groups or fewer when the channels need it:
Wu & He, 2018) or "batch" (BatchNormalization, Keras' momentum 0.99). epsilon None keeps Keras'
default (1e-3); torch's GroupNorm / BatchNorm2d use 1e-5.
"""

import math

from keras import layers

NORMS = (None, "group", "batch")


def check_norm(norm):
    """Raises a ValueError naming the choices unless `norm` is one of NORMS."""
    if norm not in NORMS:
        raise ValueError(f"norm must be None, 'group' or 'batch', received {norm!r}")


def norm_layer(norm, channels, name, epsilon=None):
    """A normalisation layer for [..., channels] features, or None when norm is None."""
    check_norm(norm)
    if norm is None:
        return None
    options = {} if epsilon is None else {"epsilon": float(epsilon)}
    if norm == "group":
        return layers.GroupNormalization(groups=math.gcd(32, channels), name=name, **options)
    return layers.BatchNormalization(name=name, **options)
