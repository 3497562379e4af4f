"""fpn_keras/predict_sources.py (what `fpn-keras predict` reads) and, through the command
line, what predict writes for folders, patterns and videos (fpn_keras/predicting.py)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from fpn_keras import cli, predict_sources
from fpn_keras.predict_sources import Source, SourceError, expand


def _image(path, shape=(40, 60, 3), seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, np.uint8)).save(path)
    return str(path)


@pytest.fixture
def folder(tmp_path):
    """in/ holding a.png, b.jpg, notes.txt and sub/c.png."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    _image(root / "b.jpg", seed=1)
    _image(root / "a.png", seed=2)
    _image(root / "sub" / "c.png", seed=3)
    (root / "notes.txt").write_text("not an image")
    return root


# ---------------------------------------------------------------- expand


def test_a_folder_gives_its_images_sorted_and_skips_the_rest_with_a_reason(folder):
    sources, skipped = expand([folder])
    assert sources == [Source(str(folder / "a.png"), "image"), Source(str(folder / "b.jpg"), "image")]
    assert [path for path, _ in skipped] == [str(folder / "notes.txt"), str(folder / "sub")]
    assert "suffix '.txt'" in skipped[0][1] and "--recursive" in skipped[1][1]


def test_recursive_reads_sub_folders(folder):
    sources, skipped = expand([folder], recursive=True)
    assert [s.path for s in sources] == [str(folder / p) for p in ("a.png", "b.jpg", os.path.join("sub", "c.png"))]
    assert [path for path, _ in skipped] == [str(folder / "notes.txt")]


def test_patterns_are_expanded_here_and_inputs_are_read_once(folder, tmp_path):
    sources, skipped = expand([str(folder / "*.png"), str(folder / "a.png")])
    assert sources == [Source(str(folder / "a.png"), "image")] and skipped == []
    sources, _ = expand([str(tmp_path / "**" / "*.png")], recursive=True)
    assert [s.path for s in sources] == [str(folder / "a.png"), str(folder / "sub" / "c.png")]
    # As the shell would pass them: matched files by suffix, a matched folder as a folder.
    sources, skipped = expand([str(folder / "*")])
    assert [s.path for s in sources] == [str(folder / p) for p in ("a.png", "b.jpg", os.path.join("sub", "c.png"))]
    assert [path for path, _ in skipped] == [str(folder / "notes.txt")]


def test_a_file_named_on_the_command_line_is_classified_by_suffix(tmp_path):
    (tmp_path / "clip.MOV").write_bytes(b"")
    (tmp_path / "photo").write_bytes(b"")
    sources, _ = expand([tmp_path / "clip.MOV", tmp_path / "photo"])
    assert sources == [Source(str(tmp_path / "clip.MOV"), "video"), Source(str(tmp_path / "photo"), "image")]


def test_what_names_nothing_is_an_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        expand([tmp_path / "missing.jpg"])
    with pytest.raises(SourceError, match="no file or folder matches"):
        expand([str(tmp_path / "*.jpg")])


def test_video_writer_and_reader_round_trip(tmp_path):
    pytest.importorskip("cv2")
    path = str(tmp_path / "clip.mp4")
    writer = predict_sources.VideoWriter(path, 12.0, width=96, height=64)
    for i in range(5):
        writer.write(np.full((64, 96, 3), 40 * i, np.uint8))
    writer.close()
    with predict_sources.VideoReader(path) as reader:
        frames = list(reader)
        assert (reader.fps, reader.width, reader.height, reader.frame_count) == (12.0, 96, 64, 5)
    assert len(frames) == 5 and frames[0].shape == (64, 96, 3)
    # Flat grey frames survive MPEG-4 coding within a few levels.
    assert [int(round(f.mean())) for f in frames] == pytest.approx([0, 40, 80, 120, 160], abs=3)
    assert predict_sources.video_output_name("x/clip.AVI") == "clip.avi"
    assert predict_sources.video_output_name("x/clip.mkv") == "clip.mp4"


# ---------------------------------------------------------------- fpn-keras predict


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained tiny RetinaNet at 64x64 that keeps its 5 best candidates (score threshold 0)."""
    from fpn_keras.models.backbones import small_resnet
    from fpn_keras.models.detector import FPNDetector
    from fpn_keras.models.retinanet import RetinaNet

    head = RetinaNet(num_classes=3, min_level=3, max_level=5, anchor_scale=2.0, channels=16, num_convs=1,
                     score_threshold=0.0, max_detections=5, name="head")
    model = FPNDetector(num_classes=3, backbone=small_resnet((8, 16, 32, 64)), head=head, fpn_channels=16,
                        image_size=(64, 64), class_names=["a", "b", "c"])
    model(np.zeros((1, 64, 64, 3), "float32"))
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


def _predict(capsys, model_file, *inputs, out):
    code = cli.main(["predict", "--model", str(model_file), *map(str, inputs), "--out", str(out),
                     "--score-threshold", "0"])
    stdout, stderr = capsys.readouterr()
    return code, stdout, stderr


def test_predict_on_a_folder_skips_the_text_file_and_writes_coco_results(capsys, folder, model_file, tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "pred"
    code, stdout, stderr = _predict(capsys, model_file, folder, out=out)
    assert code == 0, stderr
    assert f"fpn-keras predict: skipping {folder / 'notes.txt'}: not an image or video" in stderr
    summary = stdout.strip().splitlines()[-1]
    assert summary.startswith("predict: 2 image(s), ") and "skipped 2 input(s) (notes.txt, sub)" in summary
    assert "\r" not in stdout  # capsys is not a terminal: progress lines, no bar
    assert "predict: 2/2 images (100%)" in stdout
    for name in ("a.png", "b.png"):
        with Image.open(out / name) as image:
            assert image.size == (60, 40)
    index = json.loads((out / "images.json").read_text())
    assert [(i["id"], i["path"], i["height"], i["width"]) for i in index["images"]] == [
        (1, str(folder / "a.png"), 40, 60), (2, str(folder / "b.jpg"), 40, 60)]
    assert index["categories"] == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 10  # max_detections 5 per image, nothing below a threshold of 0
    ground_truth = COCO()
    ground_truth.dataset = {**index, "annotations": [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [5, 5, 20, 10], "area": 200, "iscrowd": 0}]}
    ground_truth.createIndex()
    loaded = ground_truth.loadRes(str(out / "results.json"))
    assert len(loaded.getAnnIds()) == 10 and set(loaded.getImgIds()) == {1, 2}
    for row in results:
        x, y, w, h = row["bbox"]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= 60.01 and y + h <= 40.01, row
        assert row["category_id"] in (1, 2, 3)
    detections = json.loads((out / "detections.json").read_text())
    assert sorted(detections) == [str(folder / "a.png"), str(folder / "b.jpg")]


def test_predict_on_a_pattern_reads_only_its_matches(capsys, folder, model_file, tmp_path):
    code, stdout, stderr = _predict(capsys, model_file, folder / "*.jpg", out=tmp_path / "pred")
    assert code == 0, stderr
    assert sorted(os.listdir(tmp_path / "pred")) == ["b.png", "detections.json", "images.json", "results.json"]
    assert "skipping" not in stderr


def test_predict_on_a_video_writes_a_video_with_the_same_frames_fps_and_size(capsys, model_file, tmp_path):
    cv2 = pytest.importorskip("cv2")
    clip = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"mp4v"), 15, (96, 64))
    rng = np.random.default_rng(0)
    for _ in range(5):
        writer.write(rng.integers(0, 256, (64, 96, 3), np.uint8))
    writer.release()
    out = tmp_path / "pred"
    code, stdout, stderr = _predict(capsys, model_file, clip, out=out)
    assert code == 0, stderr
    assert f"{clip}: 5 frames, 25 detections -> {out / 'clip.mp4'}" in stdout
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 5
    assert capture.get(cv2.CAP_PROP_FPS) == 15
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (96, 64)
    capture.release()
    index = json.loads((out / "images.json").read_text())["images"]
    assert [(i["id"], i["video"], i["frame"]) for i in index] == [(k + 1, clip, k) for k in range(5)]
    detections = json.loads((out / "detections.json").read_text())
    assert sorted(detections) == [f"{clip}#{k}" for k in range(5)]


def test_predict_without_opencv_names_the_extra(capsys, model_file, tmp_path, monkeypatch):
    import sys

    (tmp_path / "clip.mp4").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    code, _, stderr = _predict(capsys, model_file, tmp_path / "clip.mp4", out=tmp_path / "pred")
    assert code == 2 and 'pip install "fpn_keras[video]"' in stderr, stderr


def test_predict_with_no_readable_input_is_a_usage_error(capsys, model_file, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    code, _, stderr = _predict(capsys, model_file, tmp_path / "broken.png", out=tmp_path / "pred")
    assert code == 2 and "none of the inputs could be read" in stderr and "broken.png" in stderr, stderr
    code, _, stderr = _predict(capsys, model_file, tmp_path / "missing.png", out=tmp_path / "pred2")
    assert code == 2 and "missing.png" in stderr and "does not exist" in stderr, stderr
