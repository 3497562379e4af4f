"""fpn_keras/run_folders.py: a fresh folder per run, and how `fpn-keras train` /
`predict` choose theirs (--out, --exist-ok, --resume)."""

import os

import pytest

from fpn_keras import cli, commands
from fpn_keras.run_folders import (RunFolderExists, choose_output_folder, clear_resume_state, fresh_folder,
                                   latest_folder, numbered)


def _run(path, files=("model.keras",)):
    os.makedirs(path, exist_ok=True)
    for name in files:
        open(os.path.join(path, name), "w").close()
    return str(path)


def test_numbering_continues_after_the_highest_run(tmp_path):
    base = str(tmp_path / "runs" / "demo")
    assert fresh_folder(base) == base and latest_folder(base) is None
    _run(base)
    assert fresh_folder(base) == base + "-2"
    _run(base + "-5")
    _run(str(tmp_path / "runs" / "demo-x"))  # not a number: not a run of "demo"
    _run(str(tmp_path / "runs" / "demo-2-3"))
    assert numbered(base) == {1: base, 5: base + "-5"}
    assert fresh_folder(base) == base + "-6"  # not into the gap at -2: the newest is the highest
    assert latest_folder(base) == base + "-5"
    os.makedirs(base + "-6")  # left empty by a run that failed before writing
    assert fresh_folder(base) == base + "-6" and latest_folder(base) == base + "-6"


def test_an_explicit_folder_is_used_as_given_or_refused(tmp_path):
    default = str(tmp_path / "runs" / "demo")
    assert choose_output_folder(str(tmp_path / "new"), default) == str(tmp_path / "new")
    os.makedirs(tmp_path / "empty")
    assert choose_output_folder(tmp_path / "empty", default) == str(tmp_path / "empty")
    taken = _run(tmp_path / "taken", ("a", "b", "c", "d", "e"))
    with pytest.raises(RunFolderExists) as error:
        choose_output_folder(taken, default, resumable=True)
    assert str(error.value) == (
        f"--out {taken} already exists and holds a, b, c, d, ...: pass --exist-ok to write into it, "
        "--resume to continue that run, or another --out (without --out each run gets a fresh numbered folder)")
    assert choose_output_folder(taken, default, exist_ok=True) == taken
    assert choose_output_folder(taken, default, resume=True) == taken


def test_the_default_folder_is_fresh_unless_resumed_or_exist_ok(tmp_path):
    default = str(tmp_path / "runs" / "demo")
    assert choose_output_folder(None, default, resume=True) == default  # nothing to resume: start there
    _run(default)
    _run(default + "-2")
    assert choose_output_folder(None, default) == default + "-3"
    assert choose_output_folder(None, default, resume=True) == default + "-2"
    assert choose_output_folder(None, default, exist_ok=True) == default


def test_a_fresh_run_in_a_used_folder_clears_only_the_resume_state(tmp_path):
    run = _run(tmp_path / "run", ("model.keras", "best.keras", "best.keras.json", "history.csv"))
    _run(os.path.join(run, "checkpoints"), ("checkpoint.json", "ckpt-000000004.weights.h5"))
    clear_resume_state(run)
    assert sorted(os.listdir(run)) == ["history.csv", "model.keras"]
    clear_resume_state(run)  # nothing left to remove


@pytest.fixture
def fake_training(monkeypatch):
    """`fpn-keras train` with training.train replaced by a stub that records the folder
    it was given and writes model.keras there (the folder logic, without training)."""
    import fpn_keras.training

    calls = []

    def train(recipe, out, verbose=1, resume=False):
        calls.append((out, verbose, resume))
        _run(out)
        return None, {}

    monkeypatch.setattr(fpn_keras.training, "train", train)
    return calls


def test_train_writes_each_run_to_a_fresh_folder_and_resumes_the_newest(tmp_path, monkeypatch, capsys,
                                                                        fake_training):
    monkeypatch.chdir(tmp_path)
    for _ in range(3):
        assert cli.main(["train", "--recipe", "retinanet_synthetic"]) == 0
    assert [out for out, _, _ in fake_training] == [os.path.join("runs", "retinanet_synthetic" + s)
                                                    for s in ("", "-2", "-3")]
    assert "writing to runs/retinanet_synthetic-3" in capsys.readouterr().out
    assert cli.main(["train", "--recipe", "retinanet_synthetic", "--resume"]) == 0
    assert fake_training[-1] == (os.path.join("runs", "retinanet_synthetic-3"), 2, True)  # capsys: no tty
    assert cli.main(["train", "--recipe", "retinanet_synthetic", "--exist-ok"]) == 0
    assert fake_training[-1][0] == os.path.join("runs", "retinanet_synthetic")
    code = cli.main(["train", "--recipe", "retinanet_synthetic", "--out", "runs/retinanet_synthetic-2"])
    err = capsys.readouterr().err
    assert code == 2 and "--out runs/retinanet_synthetic-2 already exists and holds model.keras" in err, err
    assert len(fake_training) == 5


def test_an_interrupted_run_in_a_numbered_folder_is_resumed_there():
    argv = ["train", "--recipe", "demo", "--quiet"]
    assert cli.resume_command(argv, "runs/demo-2") == "fpn-keras train --recipe demo --quiet --out runs/demo-2 --resume"
    assert cli.resume_command([*argv, "--out", "x"], "x") == "fpn-keras train --recipe demo --quiet --out x --resume"


def test_predict_writes_each_run_to_a_fresh_folder(tmp_path, monkeypatch, capsys):
    """runs/predict, then runs/predict-2; an explicit --out that holds files needs --exist-ok.
    The model is a stub that finds nothing (the folder logic, without a model)."""
    import numpy as np
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "model.keras").write_bytes(b"")
    monkeypatch.setattr(commands, "_predictor", lambda *args: ((lambda images: images), [], None, "xyxy"))
    monkeypatch.setattr(commands, "read_outputs", lambda images: (
        np.zeros((len(images), 0, 4)), np.zeros((len(images), 0)), np.zeros((len(images), 0), int)))
    for _ in range(2):
        assert cli.main(["predict", "--model", "model.keras", "a.png"]) == 0
    assert sorted(os.listdir("runs")) == ["predict", "predict-2"]
    assert sorted(os.listdir("runs/predict-2")) == ["a.png", "detections.json", "images.json", "results.json"]
    capsys.readouterr()
    assert cli.main(["predict", "--model", "model.keras", "a.png", "--out", "runs/predict"]) == 2
    assert "--out runs/predict already exists and holds a.png, detections.json" in capsys.readouterr().err
    assert cli.main(["predict", "--model", "model.keras", "a.png", "--out", "runs/predict", "--exist-ok"]) == 0
    assert sorted(os.listdir("runs")) == ["predict", "predict-2"]
