"""torchvision state_dicts -> Keras weights.

A Keras layer named like a torch module (e.g. "layer1.0.conv1") takes the
tensors "<prefix><module>.<field>": Conv2D kernel <- weight (OIHW -> HWIO), bias
<- bias; DepthwiseConv2D kernel <- weight ([C, 1, kh, kw] -> [kh, kw, C, 1]);
(Frozen)BatchNorm gamma, beta, moving_mean, moving_variance <- weight,
bias, running_mean, running_var; Dense kernel <- weight (out, in -> in, out).
Every weight of the model must be set and every key under the prefix used,
except BatchNorm's num_batches_tracked and keys explicitly ignored (the
classifier "fc." of a classification checkpoint).
"""

import os

import numpy as np

from fpn_keras.convert.torch_checkpoint import load_safetensors, read_torch_checkpoint

TORCH_FIELDS = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
                "moving_mean": "running_mean", "moving_variance": "running_var"}


class ConversionError(ValueError):
    """Checkpoint and model disagree: keys missing, unused or of the wrong shape."""


def read_weights(path):
    """A state_dict {key: np.ndarray} from a .safetensors file or a torch.save file."""
    if str(path).endswith(".safetensors"):
        return load_safetensors(path)
    if not os.path.isfile(str(path)):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return read_torch_checkpoint(path)


def to_keras(value, ndim, depthwise=False):
    """A torch tensor laid out as Keras wants it: conv OIHW -> HWIO, linear (out, in) -> (in, out),
    depthwise conv (depthwise=True) [C, 1, kh, kw] -> [kh, kw, C, 1]."""
    value = np.asarray(value)
    if ndim == 4 and depthwise:
        return value.transpose(2, 3, 0, 1)
    if ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if ndim == 2:
        return value.T
    return value


def _summary(title, names, limit=20):
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"{title} ({len(names)}): {', '.join(names[:limit])}{more}"


def assign_torch_weights(modules, state_dict, prefix="", ignore=()):
    """Sets each Keras layer in `modules` {torch module path: layer} from the
    state_dict keys "<prefix><module path>.<field>". Raises ConversionError listing
    missing keys, wrong shapes and keys under `prefix` left unused (other than
    num_batches_tracked and keys starting with prefix + one of `ignore`), and then
    sets nothing. Returns the keys used."""
    from keras.layers import DepthwiseConv2D

    used, missing, wrong, pending = set(), [], [], []
    for module, layer in modules.items():
        depthwise = isinstance(layer, DepthwiseConv2D)
        for variable in layer.weights:
            field = TORCH_FIELDS.get(variable.name)
            key = f"{prefix}{module}.{field}"
            if field is None or key not in state_dict:
                missing.append(key if field else f"{layer.name}/{variable.name} (no torch field)")
                continue
            value = to_keras(state_dict[key], len(variable.shape), depthwise)
            if tuple(value.shape) != tuple(variable.shape):
                wrong.append(f"{key} {tuple(np.shape(state_dict[key]))} for {layer.name}/"
                             f"{variable.name} {tuple(variable.shape)}")
            pending.append((variable, value))
            used.add(key)
    skipped = tuple(prefix + name for name in ignore)
    unused = sorted(k for k in state_dict if k.startswith(prefix) and k not in used
                    and not k.endswith(".num_batches_tracked") and not k.startswith(skipped))
    if missing or wrong or unused:
        raise ConversionError("; ".join(_summary(title, names) for title, names in (
            ("model weights without a checkpoint key", missing), ("shape mismatches", wrong),
            ("checkpoint keys not used", unused)) if names))
    for variable, value in pending:  # nothing is set unless everything matches
        variable.assign(value.astype(variable.dtype))
    return sorted(used)


def load_torchvision_resnet(model, state_dict, prefix="backbone.body."):
    """Sets a `torchvision_resnet` model from a torchvision state_dict (numpy arrays).

    prefix: "backbone.body." for a detection checkpoint (retinanet_resnet50_fpn,
    fasterrcnn_resnet50_fpn, ...), "" for a classification one (its fc.* is ignored).
    Returns the keys used.
    """
    modules = {layer.name: layer for layer in model.layers if layer.weights}
    return assign_torch_weights(modules, state_dict, prefix, ignore=("fc.",))


def load_torchvision_mobilenet_v3(model, state_dict, prefix="backbone.body."):
    """Sets a `torchvision_mobilenet_v3_large` model from a torchvision state_dict (numpy arrays).

    prefix: "backbone.body." for a detection checkpoint (fasterrcnn_mobilenet_v3_large_fpn),
    "features." for a classification one (keys outside the prefix, its classifier, are not read).
    Both feature_maps settings hold every module of `features` (0..16). Returns the keys used.
    """
    modules = {layer.name: layer for layer in model.layers if layer.weights}
    return assign_torch_weights(modules, state_dict, prefix)
