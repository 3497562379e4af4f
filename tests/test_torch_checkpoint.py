"""The torch-free checkpoint reader / writer (fpn_keras/convert/torch_checkpoint.py).

tests/data/torch_views.pth was written by torch.save (bench/torchvision_reference.py,
write_views_checkpoint); nothing here imports torch.
"""

import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from fpn_keras.convert.torch_checkpoint import (CheckpointError, load_safetensors, load_torch_pickle,
                                                read_torch_checkpoint, save_torch_checkpoint)

VIEWS = os.path.join(os.path.dirname(__file__), "data", "torch_views.pth")


def test_reads_views_offsets_and_dtypes_from_a_torch_saved_file():
    checkpoint = load_torch_pickle(VIEWS)
    assert checkpoint["epoch"] == 3
    state = read_torch_checkpoint(VIEWS)  # unwraps {"model": state_dict, ...}
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    expected = {"base": base, "transposed": base.T, "slice": base[1:3, 2:5], "strided": base[:, ::2],
                "half": np.array([0.5, -1.25, 65504.0], np.float16),
                "bfloat16": np.array([1.0, -2.5, 3.140625], np.float32),  # bfloat16 -> float32
                "long": np.array([-3, 2**40], np.int64), "scalar": np.array(7, np.int64)}
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and state[key].shape == value.shape, key
        np.testing.assert_array_equal(state[key], value, err_msg=key)
    assert state["slice"][0, 0] == 8.0  # storage offset 8 (row 1, column 2)
    state["transposed"][0, 0] = -1  # a copy: views sharing a storage stay independent
    assert state["base"][0, 0] == 0


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


class _Evil:
    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_refuses_a_pickle_that_calls_os_system(tmp_path):
    marker = tmp_path / "ran"
    evil = _Evil()
    evil.marker = marker
    path = _zip(tmp_path / "evil.pth", {"archive/data.pkl": pickle.dumps({"w": evil}, protocol=2)})
    with pytest.raises(CheckpointError, match=r"evil\.pth: refusing to load '(posix|os|nt)\.system'"):
        read_torch_checkpoint(path)
    assert not marker.exists()


def test_clear_errors_for_legacy_files_and_foreign_zips(tmp_path):
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"w": [1.0]}))
    with pytest.raises(CheckpointError, match=r"legacy\.pth is not a zip archive.*Re-save it"):
        read_torch_checkpoint(legacy)
    foreign = _zip(tmp_path / "foreign.zip", {"readme.txt": b"hello"})
    with pytest.raises(CheckpointError, match=r"foreign\.zip: zip archive without '<name>/data.pkl'"):
        read_torch_checkpoint(foreign)
    not_tensors = _zip(tmp_path / "numbers.pth", {"archive/data.pkl": pickle.dumps({"lr": 0.1})})
    with pytest.raises(CheckpointError, match=r"numbers\.pth: not a state_dict of tensors.*'lr'"):
        read_torch_checkpoint(not_tensors)


def test_writer_round_trip_and_layout(tmp_path):
    state = {"conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2).transpose(0, 1, 3, 2),
             "half": np.array([1.5, -2.0], np.float16), "steps": np.array(5, np.int64),
             "mask": np.array([True, False])}
    path = tmp_path / "ours.pth"
    save_torch_checkpoint(path, state)
    back = read_torch_checkpoint(path)
    assert list(back) == list(state)
    for key, value in state.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape
        np.testing.assert_array_equal(back[key], value)
    with zipfile.ZipFile(path) as archive:  # one contiguous little-endian record per tensor
        assert archive.read("archive/data/0") == np.ascontiguousarray(state["conv.weight"]).tobytes()
        assert archive.read("archive/data/2") == struct.pack("<q", 5)
    with pytest.raises(CheckpointError, match="cannot write 'c' of dtype complex64"):
        save_torch_checkpoint(tmp_path / "bad.pth", {"c": np.zeros(2, np.complex64)})


def _safetensors(path, tensors):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for key, (dtype, shape, data) in tensors.items():
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path


def test_safetensors(tmp_path):
    bf16 = np.array([1.0, -2.5], np.float32).view(np.uint32) >> 16  # exact in bfloat16
    path = _safetensors(tmp_path / "w.safetensors", {
        "w": ("F32", [2, 2], np.array([[1, 2], [3, 4]], "<f4").tobytes()),
        "b": ("BF16", [2], bf16.astype("<u2").tobytes()),
        "h": ("F16", [1], np.array([0.25], "<f2").tobytes())})
    state = load_safetensors(path)
    np.testing.assert_array_equal(state["w"], [[1, 2], [3, 4]])
    assert state["b"].dtype == np.float32 and state["b"].tolist() == [1.0, -2.5]
    assert state["h"].dtype == np.float16 and state["h"].tolist() == [0.25]
    assert "__metadata__" not in state
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 4) + b"nope")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: not a safetensors file"):
        load_safetensors(bad)
