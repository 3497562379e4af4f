"""Bad inputs and faults through the command line and the Python API: the exit code and
the words a user sees (issue 15). docs/robustness.md has the table of every case tried
and the test that covers it; the cases tested beside their module (tests/test_cli.py,
tests/test_training.py, tests/test_data_coco.py, tests/test_data_voc.py,
tests/test_preprocessing.py, tests/test_detector.py, tests/test_export.py,
tests/test_export_tflite.py, tests/test_jpeg_check.py) are referenced there, not
repeated here. This file holds the rest: a JPEG damaged in the middle through `train` and
`evaluate`, data and model files nobody had tried, a full disk at checkpoint time, a
SIGINT-then-resume run under op determinism, and a worker killed in a 2-worker run.
"""

import errno
import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image

from fpn_keras import cli, training
from fpn_keras.callbacks import CheckpointWriteError
from train_helpers import tiny_recipe

HERE = os.path.dirname(os.path.abspath(__file__))


def call(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _write_recipe(path, **train):
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(tiny_recipe(**train).to_dict(), f)
    return str(path)


def _jpeg(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _coco_folder(folder, num_images, damaged=None):
    """num_images synthetic 128x128 JPEGs with their boxes as a COCO folder; image
    `damaged` has 400 bytes cut from the middle of its scan (header and end marker kept)."""
    from fpn_keras.data import synthetic

    data = synthetic.generate(num_images, image_size=(128, 128), seed=3)
    (folder / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(num_images):
        content = _jpeg(data["images"][i])
        if i == damaged:
            middle = len(content) // 2
            content = content[:middle] + content[middle + 400:]
        (folder / "images" / f"{i}.jpg").write_bytes(content)
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": 128, "width": 128})
        for box, label in zip(data["boxes"][i], data["labels"][i]):
            if label >= 0:
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(synthetic.CLASS_NAMES)]
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return f"coco:{path}:{folder / 'images'}"


# ----------------------------------------------------------------------- data


def test_a_jpeg_damaged_in_the_middle_is_skipped_and_named_by_train_and_evaluate(tmp_path, capsys, caplog):
    """PIL and TensorFlow decode it without an error (libjpeg prints a warning on stderr
    and fills the rest of the image with flat blocks); both commands skip it, name the
    file in libjpeg's words and count it in the summary."""
    spec = _coco_folder(tmp_path / "data", 10, damaged=9)
    recipe = _write_recipe(tmp_path / "tiny.yaml", epochs=1, checkpoint_every_n_steps=0)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="fpn_keras.data"):
        code, stdout, err = call(capsys, "train", "--recipe", recipe, "--data", spec, "--out", out, "--quiet")
    assert code == 0, err[-3000:]
    named = [r.getMessage() for r in caplog.records if "damaged JPEG data" in r.getMessage()]
    assert any("9.jpg" in m and "libjpeg: Corrupt JPEG data: premature end of data segment" in m
               for m in named), named
    assert "9 images kept" in named[-1] and "1 damaged JPEG data" in named[-1], named[-1]
    assert "8 images" in stdout  # 9 usable, 1 held out for validation

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fpn_keras.data"):
        code, stdout, err = call(capsys, "evaluate", "--model", out / "model.keras", "--data", spec,
                                 "--out", tmp_path / "eval")
    assert code == 0, err[-3000:]
    assert any("9.jpg" in r.getMessage() and "damaged JPEG data" in r.getMessage() for r in caplog.records)
    assert "(9 images)" in stdout


def test_predict_warns_about_a_damaged_jpeg_it_was_asked_to_read(tmp_path, capsys, make_detector):
    model = make_detector()
    model.image_size = (64, 64)
    model(np.zeros((1, 64, 64, 3), "float32"))
    model.save(tmp_path / "model.keras")
    content = _jpeg(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (tmp_path / "fine.jpg").write_bytes(content)
    (tmp_path / "cut.jpg").write_bytes(content[: len(content) // 2] + content[len(content) // 2 + 400:])
    code, _, err = call(capsys, "predict", "--model", tmp_path / "model.keras", tmp_path / "fine.jpg",
                        tmp_path / "cut.jpg", "--out", tmp_path / "pred")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"{tmp_path / 'cut.jpg'}: damaged JPEG data (libjpeg: Corrupt JPEG data" in \
        warnings[0], err


@pytest.mark.parametrize("content,image_folder,words", [
    ([{"id": 1}], "images", "top level must be a JSON object, got list"),
    ({"images": {"id": 1}, "annotations": [], "categories": []}, "images", "field 'images' must be a list"),
    ({"images": [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 8}], "annotations": [],
      "categories": [{"id": 1}]}, "images",
     "categories[0] is missing the required field 'name'"),
    ({"images": [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 8}], "annotations": [],
      "categories": [{"id": 1, "name": "a"}]}, "no_such_folder", "COCO image folder"),
    ({"images": [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 8}], "annotations": [],
      "categories": [{"id": 1, "name": "a"}]}, "images", "no usable images"),  # the folder is empty
])
def test_unusable_annotation_files_exit_2_before_a_run_folder_exists(tmp_path, capsys, content, image_folder,
                                                                       words):
    (tmp_path / "images").mkdir()
    annotations = tmp_path / "train.json"
    annotations.write_text(json.dumps(content))
    out = tmp_path / "run"
    code, _, err = call(capsys, "train", "--data", f"coco:{annotations}:{tmp_path / image_folder}", "--out", out)
    assert code == 2 and err.startswith("fpn-keras train: error: ") and words in err, err
    assert not out.exists()


def test_boxes_written_as_strings_or_nan_are_skipped_and_counted(tmp_path, caplog):
    from fpn_keras import data as data_lib

    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "images" / "a.png")
    annotations = tmp_path / "train.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": ["1", "2", "x", "4"]},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 2, 3, 4]},
                        {"id": 3, "image_id": 1, "category_id": 1, "bbox": ["4", "4", "20", "20"]}],
        "categories": [{"id": 1, "name": "a"}]}))  # json writes the NaN as NaN, as Python tools do
    with caplog.at_level(logging.WARNING, logger="fpn_keras.data"):
        dataset, _ = data_lib.load(f"coco:{annotations}:{tmp_path / 'images'}", "train")
    (element,) = list(dataset)
    np.testing.assert_array_equal(element["boxes"].numpy(), [[4, 4, 24, 24]])  # numeric strings are numbers
    summary = caplog.records[-1].getMessage()
    assert "1 annotation with malformed bbox" in summary and "1 box with NaN/Inf coordinates" in summary, summary
    assert "bbox ['1', '2', 'x', '4']" in caplog.text and "bbox [nan, 2, 3, 4]" in caplog.text


# ----------------------------------------------------------------------- model files


def test_a_model_file_written_by_another_fpn_keras_version_is_named(tmp_path, capsys, make_detector):
    """A .keras file whose config holds an argument this version does not know (a newer
    fpn_keras, or an edited file): exit 1, the file, the argument, both versions."""
    model = make_detector()
    model(np.zeros((1, 64, 64, 3), "float32"))
    model.save(tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    config["config"]["head"]["config"]["new_option"] = 3
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "newer.keras", "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    code, _, err = call(capsys, "evaluate", "--model", tmp_path / "newer.keras")
    assert code == 1 and str(tmp_path / "newer.keras") in err, err
    assert "Unrecognized keyword arguments passed to RetinaNet: {'new_option': 3}" in err
    assert f"Keras {keras.__version__}" in err and "the fpn_keras version that wrote it" in err
    assert err.count("\n") == 1  # one line, not Keras' config dump


# ----------------------------------------------------------------------- training faults


def test_a_full_disk_at_checkpoint_time_names_the_file_and_the_intact_checkpoint(tmp_path, monkeypatch):
    original = keras.Model.save_weights
    saves = []

    def save_weights(self, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 2:  # the second checkpoint (the end of epoch 1, step 4): the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", save_weights)
    with pytest.raises(CheckpointWriteError) as caught:
        training.train(tiny_recipe(), str(tmp_path / "run"), verbose=0)
    folder = tmp_path / "run" / "checkpoints"
    message = str(caught.value)
    assert caught.value.errno == errno.ENOSPC
    assert f"step 4 to {folder / 'ckpt-000000004.weights.h5'}: No space left on device" in message, message
    assert f"{folder / 'ckpt-000000003.weights.h5'} (step 3), is intact" in message and "--resume" in message
    with open(folder / "checkpoint.json") as f:
        assert json.load(f)["step"] == 3


def test_sigint_then_resume_under_op_determinism_ends_with_the_uninterrupted_weights(tmp_path):
    """tests/resume_determinism.py: SIGINT after step 5 checkpoints step 6; the resumed run
    trains steps 6 and 7 only and every weight equals the uninterrupted run's, bit for bit
    (tests/test_training.py checks the same without determinism to 1e-5, after SIGKILL,
    and the batches' pixels)."""
    result = subprocess.run([sys.executable, os.path.join(HERE, "resume_determinism.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=400, cwd=os.path.dirname(HERE))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"interrupted_at": 6, "resumed_steps": [6, 7], "optimizer_steps": 8,
                      "max_difference": 0.0}, report


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_workers(out, extra):
    cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in extra]}
    processes = []
    for index, args in enumerate(extra):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "multi_worker_train.py"), str(out), "--cli", *args], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(HERE)))
    return processes


def _finish(processes, timeout):
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=timeout)
            results.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def test_a_worker_killed_mid_training_stops_the_other_with_what_to_restart_and_resume_recovers(tmp_path):
    """2-worker MultiWorkerMirroredStrategy on loopback, `fpn-keras train` on each; worker 1
    is SIGKILLed after step 1 of 2. Worker 0 fails within a bounded time (TF's
    coordination service misses worker 1's heartbeats, ~10-20 s) with exit 1, the lost
    task, the checkpoint and the command to restart; both restarted with it continue
    from step 1 to the end (Keras BackupAndRestore's semantics)."""
    out = tmp_path / "run"
    survivor, victim = _start_workers(out, [[], ["--kill-at", "1"]])
    victim.wait(timeout=240)
    killed = time.time()
    ((code, _, err), _) = _finish([survivor, victim], timeout=90)
    assert time.time() - killed < 90 and victim.returncode == -9
    assert code == 1, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("fpn-keras train") or line.startswith("resume")]
    checkpoint = out / "checkpoints" / "ckpt-000000001.weights.h5"
    assert lines[0].startswith("fpn-keras train: multi-worker training lost a worker "
                               "(/job:worker/replica:0/task:1 stopped) after optimizer step 1"), lines
    assert "Restart every worker (2 in TF_CONFIG" in lines[0] and f"continue from {checkpoint} (step 1)" in lines[0]
    command = lines[1].split("resume with (on every worker): ", 1)[1]
    assert command.startswith("fpn-keras train --recipe ") and command.endswith(f"--out {out} --quiet --resume")

    results = _finish(_start_workers(out, [["--resume"], ["--resume"]]), timeout=240)
    for code, stdout, err in results:
        assert code == 0, err[-3000:]
        assert "resuming from step 1 (epoch 1, batch 2)" in stdout, stdout[-2000:]
    with open(out / "metrics.json") as f:
        assert json.load(f)["optimizer_steps"] == 2  # 8 images / global batch 4: no step lost or repeated
