"""Inference precision: one trained FPNDetector, run in fp32, bf16 or fp16 without retraining.

`with_precision(detector, "bf16")` rebuilds the detector under Keras' mixed policy
("mixed_bfloat16"; "mixed_float16" for fp16) and copies its weights: variables stay
float32, convolutions and matmuls compute in 16 bits, and the heads cast their outputs
to float32, so anchor decoding, box clipping and NMS run in float32 as in fp32
(fpn_keras.layers.dense_heads, layers.box_head). bf16 needs a CPU with AVX512_BF16 /
AMX (or a GPU); fp16 is for GPUs (on a CPU TensorFlow emulates it, slower than fp32).

Names: "fp32" | "bf16" | "fp16" (also "float32", "bfloat16", "float16", and the Keras
policy names "mixed_bfloat16" / "mixed_float16").
"""

import contextlib
import warnings

import keras
import numpy as np

PRECISIONS = ("fp32", "bf16", "fp16")
_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "mixed_bfloat16": "bf16",
            "mixed_float16": "fp16"}


def canonical(precision):
    """"fp32" | "bf16" | "fp16" for any accepted name (None -> "fp32")."""
    if precision is None:
        return "fp32"
    name = _ALIASES.get(str(precision).lower(), str(precision).lower())
    if name not in _POLICIES:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, received {precision!r}")
    return name


def policy_name(precision):
    """The Keras dtype policy of a precision: "float32", "mixed_bfloat16" or "mixed_float16"."""
    return _POLICIES[canonical(precision)]


def precision_of(detector):
    """The precision a built detector computes in ("fp32", "bf16", "fp16")."""
    return canonical(detector.dtype_policy.name)


def cpu_flags():
    """The CPU feature flags of this machine (Linux /proc/cpuinfo), or an empty set."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def hardware_note(precision, flags=None, has_gpu=None):
    """None when this machine runs `precision` natively, else one sentence on why it will
    be slow (the run still works and gives the same detections within the precision's
    rounding)."""
    precision = canonical(precision)
    if precision == "fp32":
        return None
    if has_gpu is None:
        has_gpu = _has_gpu()
    if has_gpu:
        return None
    flags = cpu_flags() if flags is None else set(flags)
    if precision == "bf16" and not flags & {"avx512_bf16", "amx_bf16"}:
        return ("this CPU has no bfloat16 instructions (AVX512_BF16 or AMX-BF16): bf16 is emulated and "
                "slower than fp32 here")
    if precision == "fp16" and not flags & {"avx512_fp16", "amx_fp16"}:
        return "fp16 is for GPUs: on this CPU it is emulated and slower than fp32 (use bf16 on CPUs)"
    return None


def _has_gpu():
    try:
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
        if keras.backend.backend() == "jax":
            import jax

            return any(d.platform == "gpu" for d in jax.devices())
    except Exception:  # noqa: BLE001 - a device query must not break inference
        return False
    return False


@contextlib.contextmanager
def dtype_policy(name):
    """Sets the Keras global dtype policy for the block (None: leave it)."""
    if not name:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _with_policy(config, policy):
    """A layer config tree with every layer's dtype policy replaced by `policy`."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            # Layers' policies only: an InputLayer's "dtype" string is its tensors' dtype.
            if key == "dtype" and isinstance(value, dict) and "DTypePolicy" in str(value.get("class_name")):
                out[key] = policy
            else:
                out[key] = _with_policy(value, policy)
        return out
    if isinstance(config, list):
        return [_with_policy(value, policy) for value in config]
    return config


def with_precision(detector, precision, warn=True):
    """A copy of a built `detector` computing in `precision` ("fp32" | "bf16" | "fp16"), with
    the same (float32) weights; `detector` itself if it already computes in it. Detections
    stay float32 (boxes in `bounding_box_format`, input pixels). The copy is not compiled.
    warn: a warning when this machine has no native support (`hardware_note`)."""
    from fpn_keras.models.detector import FPNDetector

    precision = canonical(precision)
    if precision_of(detector) == precision:
        return detector
    if not detector.built:
        raise ValueError("with_precision needs a built detector (call it on images, or load a saved one)")
    note = hardware_note(precision) if warn else None
    if note:
        warnings.warn(f"precision {precision}: {note}", stacklevel=2)
    policy = policy_name(precision)
    config = _with_policy(detector.get_config(), policy)
    config.pop("name", None)
    with dtype_policy(policy):
        model = FPNDetector.from_config(config)
        model(np.zeros((1, 64, 64, 3), np.float32))  # builds every layer
    sources, targets = detector.weights, model.weights
    if len(sources) != len(targets):
        raise ValueError(f"the {precision} copy has {len(targets)} weights, the detector {len(sources)}")
    for source, target in zip(sources, targets):
        if tuple(source.shape) != tuple(target.shape):
            raise ValueError(f"weight {source.path} {tuple(source.shape)} != {target.path} {tuple(target.shape)}")
        target.assign(source)
    return model


__all__ = ["PRECISIONS", "canonical", "hardware_note", "policy_name", "precision_of", "with_precision"]
