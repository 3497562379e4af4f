"""detectron2 checkpoints as {name: np.ndarray}, without torch or detectron2.

detectron2's model zoo `.pkl` files are plain pickles of a dict {"model": {name: array},
"__author__": ..., maybe "matching_heuristics": ...}; its own training writes `.pth`
(torch.save of {"model": state_dict, ...}). `read_detectron2_weights` reads either, and
`.safetensors` / `.npz` files holding the state_dict itself.

A pickle can name any Python callable and have the reader call it. The unpickler here
admits dicts, lists, tuples, strings, bytes, numbers, None and numpy arrays: the only
globals it resolves are numpy's array reconstruction (`_reconstruct`, `ndarray`, `dtype`,
`scalar`, `_frombuffer`), checked to build plain (not object) arrays, and `_codecs.encode` of a str to
latin-1 bytes and `bytes()` (how protocol 2 writes bytes); any other global is refused with a
CheckpointError naming it, before anything is called.
"""

import io
import os
import pickle

import numpy as np

from fpn_keras.convert.torch_checkpoint import CheckpointError, load_safetensors, read_torch_checkpoint

NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                 "numpy._core.numeric", "numpy")


def _plain_dtype(*args, **kwargs):
    dtype = np.dtype(*args, **kwargs)
    if dtype.hasobject:
        raise CheckpointError(f"refusing a numpy array of dtype {dtype} (Python objects)")
    return dtype


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise CheckpointError(f"refusing to rebuild a numpy array of type {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, _plain_dtype(dtype))


def _scalar(dtype, data=None):
    dtype = _plain_dtype(dtype)
    if isinstance(data, str):  # a Python 2 pickle read with encoding="latin1"
        data = data.encode("latin1")
    return np.frombuffer(data, dtype, count=1)[0]


def _latin1_bytes(text, encoding="latin1"):
    """_codecs.encode, as protocol-2 pickles write bytes: only str -> latin-1 bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _empty_bytes(*args):
    """builtins.bytes, as protocol 2 writes b"": only without arguments."""
    if args:
        raise CheckpointError(f"refusing bytes{args!r}")
    return b""


def _frombuffer(buffer, dtype, shape, order):
    """numpy's _frombuffer, as protocol 5 writes arrays: a plain array copied from bytes."""
    if not isinstance(buffer, (bytes, bytearray, memoryview)) or order not in ("C", "F"):
        raise CheckpointError(f"refusing _frombuffer({type(buffer).__name__}, order {order!r})")
    return np.frombuffer(buffer, _plain_dtype(dtype)).reshape(shape, order=order).copy()


_ALLOWED = {"_reconstruct": _reconstruct, "ndarray": np.ndarray, "dtype": _plain_dtype,
            "scalar": _scalar, "_frombuffer": _frombuffer}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, handle, path):
        super().__init__(handle, encoding="latin1")  # Detectron (Python 2) pickles, as detectron2
        self.path = path

    def find_class(self, module, name):
        if module in NUMPY_MODULES and name in _ALLOWED:
            return _ALLOWED[name]
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) in (("builtins", "bytes"), ("__builtin__", "bytes")):
            return _empty_bytes
        raise CheckpointError(f"{self.path}: refusing to load '{module}.{name}' (a detectron2 .pkl "
                              "holds only dicts, lists, strings, numbers and numpy arrays)")

    def persistent_load(self, pid):
        raise CheckpointError(f"{self.path}: unsupported persistent id {pid!r} (not a detectron2 .pkl)")


def load_detectron2_pickle(path):
    """The object in a detectron2 .pkl file, read by the restricted unpickler above."""
    path = str(path)
    with open(path, "rb") as handle:
        try:
            return _RestrictedUnpickler(io.BufferedReader(handle), path).load()
        except CheckpointError:
            raise
        except Exception as error:  # a truncated or foreign file
            raise CheckpointError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from error


def _state_dict(obj, path):
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not {{'model': {{name: array}}}}")
    wrong = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, (np.ndarray, np.generic))]
    if wrong:
        raise CheckpointError(f"{path}: entries {wrong[:5]} are not named arrays")
    return {k: np.asarray(v) for k, v in obj.items()}


def read_detectron2_weights(path):
    """{name: np.ndarray} of a detectron2 checkpoint: .pkl (model zoo), .pth (detectron2's
    torch.save of {"model": ...}), .safetensors or .npz (the state_dict itself)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.endswith(".pkl"):
        return _state_dict(load_detectron2_pickle(path), path)
    if path.endswith(".safetensors"):
        return load_safetensors(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if path.endswith((".pth", ".pt")):
        return read_torch_checkpoint(path)
    raise CheckpointError(f"{path}: unknown checkpoint type; expected .pkl, .pth, .safetensors or .npz")
