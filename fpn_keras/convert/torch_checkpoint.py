"""PyTorch checkpoints (.pth / .pt) and safetensors files as numpy, without torch.

`torch.save` (torch >= 1.6) writes a zip archive `<name>/data.pkl` (a pickle of
the object, tensors as `torch._utils._rebuild_tensor_v2(storage, offset, shape,
strides, ...)` with storages as persistent ids ('storage', <torch.FloatStorage>,
key, location, numel)) plus one raw little-endian record `<name>/data/<key>` per
storage. The unpickler below builds numpy arrays from those records and refuses
every other global, so reading a checkpoint runs no code from it.

numpy only (no package imports): `bench/torchvision_reference.py` loads this
file by path where torch is installed and Keras is not.
"""

import collections
import io
import json
import pickle
import struct
import types
import zipfile

import numpy as np

# torch storage class -> numpy dtype of its records ("bfloat16": uint16 bits, read as float32).
STORAGE_DTYPES = {
    "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "DoubleStorage": "float64", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "UntypedStorage": "uint8",
}
TORCH_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
                "float64": "float64", "int64": "int64", "int32": "int32", "int16": "int16",
                "int8": "int8", "uint8": "uint8", "bool": "bool"}
_STORAGE_NAMES = {dtype: name for name, dtype in STORAGE_DTYPES.items() if name != "UntypedStorage"}


class CheckpointError(ValueError):
    """A checkpoint this reader cannot (or will not) read; the message names the file."""


class _StorageType:
    def __init__(self, dtype):
        self.dtype = dtype


def _bfloat16_to_float32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _rebuild_tensor(storage, offset, shape, strides, requires_grad=False, hooks=None, metadata=None):
    """A numpy copy of the strided view storage[offset + sum(i_k * strides_k)]."""
    if not isinstance(storage, np.ndarray):
        raise CheckpointError(f"_rebuild_tensor_v2 given a {type(storage).__name__}, not a storage")
    shape, strides = tuple(shape), tuple(strides)
    if 0 in shape:
        return np.empty(shape, storage.dtype)
    end = offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if offset < 0 or end >= storage.size or min(strides, default=0) < 0:
        raise CheckpointError(f"tensor view (offset {offset}, shape {shape}, strides {strides}) "
                              f"lies outside its storage of {storage.size} elements")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape, tuple(s * storage.itemsize for s in strides), writeable=False)
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("argparse", "Namespace"): types.SimpleNamespace,  # torchvision's reference scripts save "args"
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data, archive, prefix, path, byteorder):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path, self.byteorder = archive, prefix, path, byteorder
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("torch", "torch.storage") and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and name in TORCH_DTYPES:
            return TORCH_DTYPES[name]
        raise CheckpointError(f"{self.path}: refusing to load '{module}.{name}' (only tensors, "
                              "dicts and plain values are read from a checkpoint)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"{self.path}: unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self.storages:
            record = f"{self.prefix}data/{key}"
            try:
                raw = self.archive.read(record)
            except KeyError:
                raise CheckpointError(f"{self.path}: storage record {record!r} is missing") from None
            dtype = storage_type.dtype
            stored = np.dtype("uint16" if dtype == "bfloat16" else dtype).newbyteorder(self.byteorder)
            array = np.frombuffer(raw, stored)
            if array.size < numel:
                raise CheckpointError(f"{self.path}: storage {key} holds {array.size} elements, "
                                      f"expected {numel}")
            array = array[:numel]
            array = _bfloat16_to_float32(array) if dtype == "bfloat16" else array.astype(dtype)
            self.storages[key] = array
        return self.storages[key]


def load_torch_pickle(path):
    """The object `torch.save` wrote to `path` (tensors as numpy arrays)."""
    path = str(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a zip archive: it is not a torch.save file, or was written in "
            "the legacy format (torch < 1.6 or _use_new_zipfile_serialization=False). "
            "Re-save it with a current torch: torch.save(torch.load(old), new)")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if not pickles:
            raise CheckpointError(f"{path}: zip archive without '<name>/data.pkl'; "
                                  "not a torch.save checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "<"
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = "<" if archive.read(f"{prefix}byteorder").strip() == b"little" else ">"
        return _Unpickler(archive.read(pickles[0]), archive, prefix, path, byteorder).load()


def _as_state_dict(obj, path):
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    others = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if others or not obj:
        raise CheckpointError(f"{path}: not a state_dict of tensors (entries {others[:5]} are "
                              f"not tensors; top-level keys {list(obj)[:8]})")
    return dict(obj)


def read_torch_checkpoint(path):
    """{key: np.ndarray} from a torch.save'd state_dict, or from a checkpoint dict's
    "model" / "state_dict" entry. float16 stays float16, bfloat16 becomes float32."""
    return _as_state_dict(load_torch_pickle(path), str(path))


# --- writing (numpy -> a file torch.load reads) ---

def _pickle_int(value):
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -2**31 <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _pickle_str(text):
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data


def _pickle_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _pickle_ints(values):
    return b"(" + b"".join(_pickle_int(int(v)) for v in values) + b"t"


def save_torch_checkpoint(path, state_dict):
    """Writes {key: np.ndarray} as torch.save would (zip, pickle protocol 2, one
    contiguous little-endian record per tensor); `torch.load` and
    `read_torch_checkpoint` both read it. dtypes: those of STORAGE_DTYPES but bfloat16."""
    body = [b"\x80\x02", _pickle_global("collections", "OrderedDict"), b")R("]
    records = {}
    for index, (key, value) in enumerate(state_dict.items()):
        array = np.asarray(value)
        if array.dtype.name not in _STORAGE_NAMES:
            raise CheckpointError(f"{path}: cannot write {key!r} of dtype {array.dtype}")
        array = np.array(array, array.dtype.newbyteorder("<"), order="C")  # 0-d stays 0-d
        records[str(index)] = array.tobytes()
        strides = [s // array.itemsize for s in array.strides]
        storage = (b"(" + _pickle_str("storage") + _pickle_global("torch", _STORAGE_NAMES[array.dtype.name])
                   + _pickle_str(str(index)) + _pickle_str("cpu") + _pickle_int(array.size) + b"tQ")
        body += [_pickle_str(key), _pickle_global("torch._utils", "_rebuild_tensor_v2"), b"(",
                 storage, _pickle_int(0), _pickle_ints(array.shape), _pickle_ints(strides), b"\x89",
                 _pickle_global("collections", "OrderedDict"), b")R", b"tR"]
    body.append(b"u.")
    with zipfile.ZipFile(str(path), "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", b"".join(body))
        archive.writestr("archive/byteorder", b"little")
        for key, data in records.items():
            archive.writestr(f"archive/data/{key}", data)
        archive.writestr("archive/version", b"3\n")


# --- safetensors: 8-byte little-endian header length, JSON header, raw data ---

SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                      "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                      "BOOL": "bool"}


def load_safetensors(path):
    """{key: np.ndarray} from a .safetensors file (bfloat16 becomes float32)."""
    path = str(path)
    with open(path, "rb") as handle:
        data = handle.read()
    (length,) = struct.unpack("<Q", data[:8]) if len(data) >= 8 else (len(data),)
    try:
        header = json.loads(data[8:8 + length])
    except ValueError:
        raise CheckpointError(f"{path}: not a safetensors file (no JSON header)") from None
    state = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: {key!r} has unsupported dtype {entry['dtype']}")
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        begin, end = (8 + length + o for o in entry["data_offsets"])
        array = np.frombuffer(data[begin:end], "<u2" if dtype == "bfloat16" else np.dtype(dtype).newbyteorder("<"))
        array = _bfloat16_to_float32(array) if dtype == "bfloat16" else array.astype(dtype)
        state[key] = array.reshape(entry["shape"])
    return state
