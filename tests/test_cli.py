"""The `fpn-keras` command line through its real entry points.

Exit codes (see fpn_keras/cli.py): 0 success; 2 usage or configuration error (bad
option, invalid recipe or --set, unknown dataset spec, a named input file or data
path that does not exist); 1 runtime failure on valid inputs (e.g. a model file that
exists but cannot be loaded). Errors are one line on stderr; --verbose adds the
traceback.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fpn_keras import cli
from fpn_keras.config import load_recipe

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
SCRIPT = shutil.which("fpn-keras", path=os.path.dirname(sys.executable))
ENTRY = [SCRIPT] if SCRIPT else [sys.executable, "-m", "fpn_keras"]
TINY = ["--set", "data.num_train_images=16", "--set", "data.num_val_images=8",
        "--set", "train.batch_size=8", "--set", "train.epochs=1", "--set", "train.warmup_steps=0",
        "--set", "train.eval_every_n_epochs=1", "--set", "data.image_size=[128,128]"]


def run(*args, cwd=None, timeout=600):
    return subprocess.run([*ENTRY, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd,
                          timeout=timeout)


def last_line(stderr):
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def printed_ap(stdout):
    """The AP row of the last COCO table printed by fpn_keras (format_metrics)."""
    values = re.findall(r"^\s+AP\s+AP @\[IoU=0\.50:0\.95 \| area=all \| maxDets=100\]\s+= (-?\d+\.\d+)$",
                        stdout, re.M)
    assert values, stdout[-2000:]
    return float(values[-1])


def call(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- help


def _subparsers():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help_documents_every_option(capsys, command):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: fpn-keras {command}")
    assert "exit codes" in out
    for action in _subparsers()[command]._actions:
        for option in action.option_strings:
            assert option in out
        assert action.help, f"{command}: {action.dest} has no help"


def test_benchmark_runs_the_named_bench_script_with_its_arguments(capfd):
    assert cli.main(["benchmark", "ablation", "--help"]) == 0
    out = capfd.readouterr().out
    assert "--head {rpn,faster_rcnn}" in out and "Table 3" in out  # bench/ablation.py's own help


def test_benchmark_unknown_name_is_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["benchmark", "nonsense"])
    assert info.value.code == 2
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err


def test_python_m_help():
    result = subprocess.run([sys.executable, "-m", "fpn_keras", "--help"], capture_output=True, text=True,
                            env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in cli.COMMANDS:
        assert command in result.stdout


def test_no_command_is_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2


def test_recipes_lists_one_line_each(capsys):
    code, out, _ = call(capsys, "recipes")
    lines = out.strip().splitlines()
    assert code == 0 and any(line.startswith("faster_rcnn_r50_fpn_1x_coco ") for line in lines)
    assert all("target" in line.lower() for line in lines)
    code, out, _ = call(capsys, "recipes", "faster_rcnn_r101_fpn_1x_coco")
    assert code == 0 and "backbone: resnet101" in out and "steps: 90000" in out


# ---------------------------------------------------------------- errors


def test_bad_recipe_key_exits_2_with_one_line():
    result = run("train", "--recipe", "retinanet_synthetic", "--set", "train.learing_rate=0.1")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("fpn-keras train: error: ")
    assert "train.learing_rate" in result.stderr and "did you mean 'learning_rate'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, expected", [
    (["--set", "train.batch_size=eight"], "train.batch_size: expected an integer"),
    (["--set", "train.batch_size.x=1"], "is not a mapping"),
    (["--set", "model.bakbone=resnet50"], "did you mean 'backbone'"),
    (["--data", "coco:/no/such/instances.json:/no/such/images"], "annotation file '/no/such/instances.json'"),
    (["--data", "voc:/no/such/VOC2007"], "VOC folder '/no/such/VOC2007' does not exist"),
    (["--data", "imagenet"], "unknown dataset spec 'imagenet'"),
    (["--strategy", "quantum"], "--strategy 'quantum'"),
    (["--set", "model.head_args.chanels=8"], "unknown key 'model.head_args.chanels' (did you mean 'channels'?)"),
    (["--set", "model.backbone_args.width=[8,8,8,8]"], "'model.backbone_args.width' (did you mean 'widths'?)"),
    (["--val-data", "voc:/no/such/VOC2007"], "VOC folder '/no/such/VOC2007' does not exist"),
])
def test_train_config_errors_exit_2(capsys, tmp_path, args, expected):
    code, _, err = call(capsys, "train", "--recipe", "retinanet_synthetic", "--out", tmp_path, *args)
    assert code == 2
    assert err.startswith("fpn-keras train: error: ") and err.count("\n") == 1, err
    assert expected in err


def test_bad_recipe_file_exits_2(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {num_classes: 4, backbone: small_resnet, head: retinanet}\n"
                    "data: {train: synthetic, val: synthetic, image_size: [128, 128]}\n"
                    "train: {epochs: many}\n")
    code, _, err = call(capsys, "train", "--recipe", path)
    assert code == 2 and str(path) in err and "train.epochs: expected an integer" in err
    code, _, err = call(capsys, "train", "--recipe", "no_such_recipe")
    assert code == 2 and "no recipe 'no_such_recipe'" in err


def test_missing_inputs_exit_2(capsys, tmp_path):
    code, _, err = call(capsys, "evaluate", "--model", tmp_path / "missing.keras")
    assert code == 2 and "model file" in err and "does not exist" in err
    code, _, err = call(capsys, "export", "--model", tmp_path / "missing.keras", "--out", tmp_path / "x")
    assert code == 2 and "does not exist" in err
    code, _, err = call(capsys, "predict", "--model", tmp_path / "missing.keras", tmp_path / "no.png")
    assert code == 2 and "image" in err and "no.png" in err


def test_unloadable_model_is_runtime_failure(capsys, tmp_path):
    broken = tmp_path / "model.keras"
    broken.write_bytes(b"this is not a zip archive")
    code, _, err = call(capsys, "evaluate", "--model", broken)
    assert code == 1
    assert err.startswith("fpn-keras evaluate: ") and err.count("\n") == 1 and "Traceback" not in err
    code, _, err = call(capsys, "--verbose", "evaluate", "--model", broken)
    assert code == 1 and "Traceback" in err
    code, _, err = call(capsys, "evaluate", "--model", broken, "--verbose")  # after the command too
    assert code == 1 and "Traceback" in err


# ---------------------------------------------------------------- train -> evaluate -> predict


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run("train", "--recipe", "retinanet_synthetic", "--out", out, "--quiet", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_train_writes_artifacts(trained):
    out, result = trained
    for name in ("model.keras", "recipe.yaml", "metrics.json", "history.csv", "predictions.png",
                 "curves.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert printed_ap(result.stdout) == pytest.approx(metrics["AP"], abs=5e-4)
    resolved = load_recipe(str(out / "recipe.yaml"))  # the resolved recipe is a valid recipe
    assert resolved.train.batch_size == 8 and resolved.data.num_train_images == 16
    with Image.open(out / "curves.png") as image:
        from fpn_keras.visualization import CURVE_SIZE

        assert image.size == CURVE_SIZE and np.asarray(image).std() > 0


def test_truncated_or_foreign_model_files_are_named_not_reported_missing(trained, capsys, tmp_path):
    import zipfile

    out, _ = trained
    data = (out / "model.keras").read_bytes()
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(data[: len(data) // 2])  # an interrupted copy
    code, _, err = call(capsys, "evaluate", "--model", truncated)
    assert code == 1 and str(truncated) in err and "not a zip archive" in err and "not found" not in err, err
    partial = tmp_path / "partial.keras"
    with zipfile.ZipFile(partial, "w") as archive:
        archive.writestr("config.json", "{}")
    code, _, err = call(capsys, "evaluate", "--model", partial)
    assert code == 1 and "not a complete .keras file" in err and "model.weights.h5" in err, err
    text = tmp_path / "model.txt"
    text.write_text("hello")
    code, _, err = call(capsys, "evaluate", "--model", text)
    assert code == 2 and "expected a .keras file" in err and "TFSMLayer" not in err, err


def test_evaluate(trained, tmp_path):
    out, _ = trained
    result = run("evaluate", "--model", out / "model.keras", "--num-images", 8, "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert printed_ap(result.stdout) == pytest.approx(metrics["AP"], abs=5e-4)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results, "the trained model made no detections on the 8 images"
    assert len({row["image_id"] for row in results}) <= 8
    for row in results:
        assert set(row) >= {"image_id", "category_id", "bbox", "score"}
        x, y, w, h = row["bbox"]  # COCO xywh in the image's pixels (128 x 128)
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128.01 and y + h <= 128.01, row
        assert 0.0 < row["score"] <= 1.0


def test_evaluate_per_class_pictures_and_results_json(trained, tmp_path, capsys):
    """evaluate writes per-class numbers, VOC mAP and two pictures; evaluate --results on the
    results.json it wrote gives the same numbers without the model."""
    from fpn_keras.evaluation import plots

    out, _ = trained
    code, stdout, err = call(capsys, "evaluate", "--model", out / "model.keras", "--num-images", 8,
                             "--out", tmp_path / "model")
    assert code == 0, err
    record = json.loads((tmp_path / "model" / "metrics.json").read_text())
    rows = record["per_class"]
    assert [row["category_id"] for row in rows] == [1, 2, 3, 4]  # the synthetic shapes
    assert sum(row["num_gt"] for row in rows) > 0
    for row in rows:
        assert set(row) == {"class", "category_id", "ap", "ap50", "ar100", "num_gt"}
        assert (row["ap"] is None) == (row["num_gt"] == 0), row
        assert row["class"] in stdout  # the printed table
    assert set(record["voc"]) == {"mAP07", "mAP", "per_class"}
    assert "VOC2007 11-point" in stdout
    with Image.open(tmp_path / "model" / "pr_curves.png") as image:
        assert image.size == plots.pr_figure_size(5)  # "all" + 4 classes
        assert len(image.convert("RGB").getcolors(1 << 24)) > 10
    with Image.open(tmp_path / "model" / "worst_images.png") as image:
        width, height = image.size
        assert width % plots.WORST_PANEL[0] == 0 and height == 2 * plots.WORST_PANEL[1]
        assert len(image.convert("RGB").getcolors(1 << 24)) > 10

    code, stdout, err = call(capsys, "evaluate", "--results", tmp_path / "model" / "results.json",
                             "--data", "synthetic", "--image-size", 128, 128, "--num-images", 8,
                             "--out", tmp_path / "results")
    assert code == 0, err
    scored = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert scored["metrics"] == record["metrics"]
    assert scored["per_class"] == record["per_class"] and scored["voc"] == record["voc"]
    assert (tmp_path / "results" / "pr_curves.png").is_file()
    assert (tmp_path / "results" / "worst_images.png").is_file()


def test_evaluate_needs_a_model_or_results(tmp_path, capsys):
    code, _, err = call(capsys, "evaluate", "--data", "synthetic")
    assert code == 2 and "--model M" in err and "--results FILE" in err, err
    (tmp_path / "r.json").write_text("[]")
    code, _, err = call(capsys, "evaluate", "--results", tmp_path / "r.json")
    assert code == 2 and "--results needs --data" in err, err
    bad = [{"image_id": 12345, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.5}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    code, _, err = call(capsys, "evaluate", "--results", tmp_path / "bad.json", "--data", "synthetic",
                        "--image-size", 128, 128, "--num-images", 2)
    assert code == 2 and "image_id 12345" in err, err


def _coco_dataset(folder, category_ids):
    """4 synthetic images as a COCO-JSON dataset with the given (non-contiguous) category ids."""
    from fpn_keras.data import synthetic

    data = synthetic.generate(4, image_size=(128, 128), seed=7)
    images, annotations = [], []
    (folder / "images").mkdir()
    for i in range(4):
        Image.fromarray(data["images"][i]).save(folder / "images" / f"{i}.png")
        images.append({"id": 100 + i, "file_name": f"{i}.png", "height": 128, "width": 128})
        for box, label in zip(data["boxes"][i], data["labels"][i]):
            if label < 0:
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + i,
                                "category_id": category_ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": c, "name": n} for c, n in zip(category_ids, synthetic.CLASS_NAMES)]
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return f"coco:{path}:{folder / 'images'}"


def test_evaluate_results_use_original_category_ids(trained, tmp_path, capsys):
    out, _ = trained
    category_ids = [3, 7, 11, 20]
    spec = _coco_dataset(tmp_path, category_ids)
    code, stdout, err = call(capsys, "evaluate", "--model", out / "model.keras", "--data", spec,
                             "--out", tmp_path / "eval")
    assert code == 0, err
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results, "the model made no detections to check"
    assert {row["category_id"] for row in results} <= set(category_ids)
    assert {row["image_id"] for row in results} <= {100, 101, 102, 103}


def test_predict(trained, tmp_path):
    out, _ = trained
    rng = np.random.default_rng(0)
    paths = []
    for name, shape in (("a.png", (100, 150, 3)), ("b.jpg", (128, 128, 3))):
        Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(tmp_path / name)
        paths.append(tmp_path / name)
    result = run("predict", "--model", out / "model.keras", *paths, "--out", tmp_path / "pred",
                 "--score-threshold", 0.0)
    assert result.returncode == 0, result.stderr[-3000:]
    detections = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert set(detections) == {str(p) for p in paths}
    for path, shape in zip(paths, ((100, 150), (128, 128))):
        with Image.open(tmp_path / "pred" / (pathlib.Path(path).stem + ".png")) as image:
            assert image.size == (shape[1], shape[0])
        for row in detections[str(path)]:
            assert set(row) == {"box", "label", "class", "score"} and len(row["box"]) == 4
            x1, y1, x2, y2 = row["box"]
            assert 0 <= x1 <= x2 <= shape[1] and 0 <= y1 <= y2 <= shape[0]
    assert sum(len(v) for v in detections.values()) > 0  # threshold 0 keeps every detection


def test_unusable_data_is_a_configuration_error_and_leaves_no_run_folder(tmp_path):
    """A COCO folder whose images are all missing: found before training, exit 2, one
    line naming the file and the count, and no run folder holding only recipe.yaml."""
    images = tmp_path / "images"
    images.mkdir()
    annotations = tmp_path / "train.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "gone.jpg", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 10, 10]}],
        "categories": [{"id": 3, "name": "widget"}]}))
    out = tmp_path / "run"
    result = run("train", "--data", f"coco:{annotations}:{images}", "--out", out)
    assert result.returncode == 2, result.stderr[-3000:]
    line = last_line(result.stderr)
    assert line.startswith("fpn-keras train: error: ") and "train.json" in line and "1 missing image file" in line
    assert not out.exists()


def test_evaluating_on_data_with_other_classes_is_an_error(trained, tmp_path, capsys):
    """The demo model (4 synthetic shape classes) on a 2-class COCO folder: one line that
    names both class lists, exit 2, not a silent AP of 0 (its labels would score as
    other classes)."""
    out, _ = trained
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "images" / "a.png")
    annotations = tmp_path / "two.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [4, 4, 20, 20]}],
        "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}]}))
    code, _, err = call(capsys, "evaluate", "--model", out / "model.keras",
                        "--data", f"coco:{annotations}:{tmp_path / 'images'}")
    assert code == 2 and "classes" in err and "are not the data's 2" in err, err


def test_precision_bf16_evaluates_like_fp32_and_is_refused_where_it_cannot_apply(trained, tmp_path, capsys):
    out, _ = trained
    scores = {}
    for precision in ("fp32", "bf16"):
        code, stdout, err = call(capsys, "evaluate", "--model", out / "model.keras", "--num-images", 8,
                                 "--out", tmp_path / precision, "--precision", precision)
        assert code == 0, err[-2000:]
        results = json.loads((tmp_path / precision / "results.json").read_text())
        assert results
        scores[precision] = {(r["image_id"], r["category_id"], tuple(round(v) for v in r["bbox"])): r["score"]
                             for r in results if r["score"] >= 0.1}
    # bf16 rounds each activation to 8 mantissa bits; the confident detections stay, at scores
    # within 0.02 (measured here: ~0.002), boxes within a pixel.
    shared = set(scores["fp32"]) & set(scores["bf16"])
    assert scores["fp32"] and len(shared) >= 0.5 * len(scores["fp32"]), (len(shared), len(scores["fp32"]))
    assert max(abs(scores["fp32"][k] - scores["bf16"][k]) for k in shared) < 0.02
    code, _, err = call(capsys, "export", "--model", out / "model.keras", "--format", "tflite",
                        "--out", tmp_path / "m.tflite", "--precision", "bf16")
    assert code == 2 and "--quantize" in err, err
    (tmp_path / "sm").mkdir()
    code, _, err = call(capsys, "predict", "--model", tmp_path / "sm", str(tmp_path / "none.png"),
                        "--precision", "bf16")
    assert code == 2, err
