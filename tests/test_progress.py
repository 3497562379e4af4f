"""fpn_keras/progress.py: one line per epoch / every 10% when stdout is not a terminal,
and `fpn-keras train` / `evaluate` writing such logs through the command line."""

import csv
import io
import os
import re
import subprocess
import sys

import pytest

from fpn_keras import cli
from fpn_keras.progress import EpochLog, Progress, interactive, track


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_interactive_asks_the_stream():
    assert interactive(_Terminal()) is True
    assert interactive(io.StringIO()) is False


def test_epoch_line_holds_the_loss_terms_lr_time_and_evaluation():
    log = EpochLog(epochs=12, total_steps=3000, terms=("loss", "cls_loss", "box_loss"),
                   metrics=("val_AP", "val_AR1000"))
    # Keras sorts the log keys by name; the line shows the head's order.
    logs = {"box_loss": 0.31234, "cls_loss": 0.5, "learning_rate": 0.002, "loss": 0.81234,
            "val_AP": 0.1234, "val_AP50": 0.3}
    assert log.format(1, logs, 41.27, step=500) == (
        "epoch 2/12  step 500/3000  41.3s  loss=0.8123 cls_loss=0.5000 box_loss=0.3123 lr=0.002 val_AP=0.1234")
    assert log.format(0, {"loss": 2e-5, "learning_rate": 1e-5}, 1.0) == "epoch 1/12  1.0s  loss=2.000e-05 lr=1e-05"


def test_progress_lines_every_ten_percent_and_at_the_end():
    stream = io.StringIO()
    progress = Progress(25, "evaluate", "images", stream=stream)  # a line every 2 images
    for n in (1, 1, 4, 18, 1):
        progress.update(n)
    progress.close()  # the last line: 25 is not a multiple of 2
    counts = [int(m) for m in re.findall(r"^evaluate: (\d+)/25 images \(\d+%\) \d+\.\ds", stream.getvalue(), re.M)]
    assert counts == [2, 6, 24, 25] and "\r" not in stream.getvalue()
    stream = io.StringIO()
    progress = Progress(None, "predict", "images", stream=stream)  # unknown total: every 100
    for _ in range(250):
        progress.update(1)
    progress.close()
    assert re.findall(r"^predict: (\d+) images ", stream.getvalue(), re.M) == ["100", "200", "250"]


def test_progress_bar_on_a_terminal_and_notes_on_their_own_line():
    stream = _Terminal()
    progress = Progress(4, "predict", "images", stream=stream)
    progress.update(2)
    progress.note("clip.mp4: 5 frames")
    progress.update(2)
    progress.close()
    text = stream.getvalue()
    assert text.startswith("\r[###############...............] predict: 2/4 images (50%)")
    assert "\r\x1b[Kclip.mp4: 5 frames\n\r[##############################] predict: 4/4 images (100%)" in text
    assert text.endswith("\n")


def test_track_counts_what_the_consumer_took():
    stream = io.StringIO()
    progress = Progress(6, "evaluate", "images", stream=stream, every_percent=50)
    batches = [[1, 2], [3, 4], [5, 6]]
    assert list(track(batches, progress, count=len)) == batches
    assert progress.done == 6
    assert re.findall(r"evaluate: (\d)/6", stream.getvalue()) == ["4", "6"]


# ---------------------------------------------------------------- through the command line


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """`fpn-keras train` of the tiny recipe (tests/train_helpers.py: 4 steps x 2 epochs,
    evaluated after each) with stdout and stderr redirected to train.log."""
    import yaml

    from train_helpers import tiny_recipe

    folder = tmp_path_factory.mktemp("logged")
    recipe = folder / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(eval_every_n_epochs=1, checkpoint_every_n_steps=0).to_dict()))
    log = folder / "train.log"
    with open(log, "w") as f:
        result = subprocess.run([sys.executable, "-m", "fpn_keras", "train", "--recipe", str(recipe),
                                 "--out", str(folder / "run")], stdout=f, stderr=subprocess.STDOUT,
                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=600)
    text = log.read_bytes().decode()  # not read_text(): universal newlines would turn "\r" into "\n"
    assert result.returncode == 0, text[-3000:]
    return folder / "run", text


def test_train_into_a_file_writes_one_line_per_epoch_and_no_carriage_return(logged_run):
    out, text = logged_run
    assert "\r" not in text and "\x08" not in text and "\x1b" not in text  # Keras' bar: "\x08" * n + "\r"
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and not re.search(r"Epoch \d", text), text[-3000:]
    with open(out / "history.csv") as f:
        history = list(csv.DictReader(f))
    pattern = (r"epoch (\d)/2  step (\d)/8  \d+\.\ds  loss=(\S+) cls_loss=\S+ box_loss=\S+ lr=(\S+) "
               r"val_AP=\S+ val_AP50=\S+ val_AP75=\S+")
    for line, row in zip(epochs, history):
        epoch, step, loss, lr = re.fullmatch(pattern, line).groups()
        assert int(epoch) == int(row["epoch"]) + 1 and int(step) == 4 * int(epoch)
        assert float(loss) == pytest.approx(float(row["loss"]), abs=1e-4)
        assert float(lr) == pytest.approx(float(row["learning_rate"]), rel=1e-3)


def test_evaluate_not_on_a_terminal_prints_progress_lines(logged_run, capsys, tmp_path):
    out, _ = logged_run
    code = cli.main(["evaluate", "--model", str(out / "model.keras"), "--num-images", "3", "--batch-size", "2",
                     "--out", str(tmp_path)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "\r" not in stdout
    assert re.findall(r"^evaluate: (\d)/3 images", stdout, re.M) == ["2", "3"]


@pytest.mark.parametrize("terminal, quiet, verbose", [(True, False, 1), (True, True, 2), (False, False, 2)])
def test_train_shows_progress_bars_only_on_a_terminal_without_quiet(monkeypatch, tmp_path, capsys,
                                                                   terminal, quiet, verbose):
    """training.train(verbose=1): Keras' bars; verbose=2: EpochLog's lines (stubbed here)."""
    import fpn_keras.progress
    import fpn_keras.training

    seen = []
    monkeypatch.setattr(fpn_keras.progress, "interactive", lambda stream=None: terminal)
    monkeypatch.setattr(fpn_keras.training, "train", lambda recipe, out, verbose, resume: seen.append(verbose)
                        or (None, {}))
    argv = ["train", "--recipe", "retinanet_synthetic", "--out", str(tmp_path / "run"), *(["--quiet"] * quiet)]
    assert cli.main(argv) == 0
    assert seen == [verbose]
