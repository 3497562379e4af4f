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


def box_iou(a, b):
    """IoU matrix [N, M] of xyxy boxes a [N, 4], b [M, 4]."""
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def unmatched_detections(ours, expected, min_iou=0.99, score_atol=1e-4, px=0.0):
    """Indices of the reference's detections `expected` {"boxes", "scores", "labels"} that no
    detection of `ours` (same keys, labels as the reference's ids) matches: same label, score
    within score_atol, and IoU >= min_iou or (px > 0) every coordinate within px pixels (a box
    clipped to a line at the image's edge has no area: its IoU is 0 / 0). Each of ours matches
    at most one. The one matcher of every converter test and of bench/convert_parity.py."""
    iou = box_iou(expected["boxes"], ours["boxes"])
    gap = np.abs(np.asarray(expected["boxes"])[:, None] - np.asarray(ours["boxes"])[None])  # [N, M, 4]
    close = gap.max(axis=-1, initial=0.0) <= px if px > 0 else np.zeros(iou.shape, bool)
    iou = np.where(close, 1.0, iou)
    same = (np.asarray(expected["labels"])[:, None] == np.asarray(ours["labels"])[None]) & (iou >= min_iou) & (
        np.abs(np.asarray(expected["scores"])[:, None] - np.asarray(ours["scores"])[None]) <= score_atol)
    taken, unmatched = np.zeros(len(ours["scores"]), bool), []
    for i in range(len(expected["scores"])):
        candidates = np.nonzero(same[i] & ~taken)[0]
        if len(candidates):
            taken[candidates[np.argmax(iou[i, candidates])]] = True
        else:
            unmatched.append(i)
    return unmatched
