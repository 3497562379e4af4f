"""Shared by the torchvision converter tests: the seeded checkpoint file and order checks."""

import numpy as np

from fpn_keras.convert import save_torch_checkpoint
from fpn_keras.convert.resnet_layout import state_dict_sha256


def seeded_checkpoint(directory, state, reference, name):
    """`state` written by the torch-free writer as directory/name, after checking it is the
    state the reference was made with (its SHA-256)."""
    assert state_dict_sha256(state) == str(reference["weights_sha256"])
    path = str(directory / name)
    save_torch_checkpoint(path, state)
    return path


def close_up_to_ties(values, expected, scores, atol, tie=1e-5):
    """values[i] ~ expected[i] (max |difference| <= atol), or ~ expected[j] for a j whose
    torchvision score is within `tie` of i's (ties may come out in either order)."""
    values, expected = np.asarray(values).reshape(len(values), -1), np.asarray(expected).reshape(len(expected), -1)
    for i in range(len(expected)):
        if np.abs(values[i] - expected[i]).max() <= atol:
            continue
        tied = np.nonzero(np.abs(scores - scores[i]) <= tie)[0]
        assert any(np.abs(values[i] - expected[j]).max() <= atol for j in tied), f"row {i}: {values[i]} vs {expected[i]}"
