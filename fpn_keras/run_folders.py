"""Where a run writes: a fresh folder per run, never over an earlier one.

`fpn-keras train` writes to runs/<recipe name> and `predict` to runs/predict by
default; when that folder already holds files the run goes to the next number,
runs/NAME-2, runs/NAME-3, ... (ultralytics' `increment_path`, numbered after the
highest existing one rather than into a gap, so the newest run has the highest number).
An explicit --out is used as given, never renamed (a script that reads OUT/model.keras
afterwards must find this run's model): if it already holds files the command stops
unless --exist-ok (write into it, overwriting files of the same name; a fresh train
run there first removes the last run's checkpoints and best model, `clear_resume_state`)
or, for train, --resume. `train --resume` without --out continues the newest run of
the recipe: the highest-numbered runs/NAME[-k].
"""

import os
import re
import shutil


class RunFolderExists(ValueError):
    """An explicit output folder already holds files (a usage error)."""


def _holds_files(path):
    return os.path.isdir(path) and bool(os.listdir(path)) or os.path.isfile(path)


def numbered(path):
    """-> {number: folder} of the existing `path` (number 1) and `path-<n>` (n >= 2)."""
    path = os.path.normpath(path)
    parent, name = os.path.split(path)
    found = {}
    if os.path.exists(path):
        found[1] = path
    pattern = re.compile(re.escape(name) + r"-(\d+)")
    for entry in os.listdir(parent or ".") if os.path.isdir(parent or ".") else ():
        match = pattern.fullmatch(entry)
        if match and int(match.group(1)) >= 2:
            found[int(match.group(1))] = os.path.join(parent, entry)
    return found


def fresh_folder(path):
    """The first of `path`, `path-2`, `path-3`, ... after the highest existing one; the
    highest itself if it is an empty folder (left by a run that failed before writing)."""
    path = os.path.normpath(path)
    found = numbered(path)
    if not found:
        return path
    highest = max(found)
    if not _holds_files(found[highest]) and os.path.isdir(found[highest]):
        return found[highest]
    return f"{path}-{highest + 1}"


def latest_folder(path):
    """The highest-numbered existing `path` / `path-<n>`, or None."""
    found = numbered(path)
    return found[max(found)] if found else None


def choose_output_folder(out, default, exist_ok=False, resume=False, resumable=False):
    """-> the folder a run writes to (not created here).

    out: the --out given (None: `default`, numbered as `fresh_folder`; with resume,
        `latest_folder(default)`); an explicit folder is returned as given, and raises
        RunFolderExists when it holds files unless exist_ok or resume (the message
        offers --resume when `resumable`).
    """
    if out is not None:
        out = os.fspath(out)
        if _holds_files(out) and not (exist_ok or resume):
            entries = sorted(os.listdir(out)) if os.path.isdir(out) else []
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise RunFolderExists(
                f"--out {out} already exists" + (f" and holds {shown}" if entries else " (a file)") +
                ": pass --exist-ok to write into it" +
                (", --resume to continue that run" if resumable and entries else "") +
                ", or another --out (without --out each run gets a fresh numbered folder)")
        return out
    if resume:
        return latest_folder(default) or os.path.normpath(default)
    return os.path.normpath(default) if exist_ok else fresh_folder(default)


RESUME_STATE = ("checkpoints", "best.keras", "best.keras.json")


def clear_resume_state(folder):
    """Removes what a later --resume or the best-model tracking would read of an earlier
    run (RESUME_STATE) from `folder`, which a fresh run writes into (--exist-ok): its
    checkpoints would be resumed and its best AP would keep this run's best.keras from
    being written. The other files are overwritten as the new run writes them."""
    for name in RESUME_STATE:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.isfile(path):
            os.remove(path)
