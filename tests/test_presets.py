"""COCO-trained presets (fpn_keras/convert/presets.py): the real rows' URLs and hashes, and
download -> hash check -> conversion -> cache for real, from an http.server on 127.0.0.1
serving a seeded torchvision retinanet_resnet50_fpn checkpoint (retinanet_layout's weights)
through the mirror variable FPN_KERAS_PRESET_URL."""

import functools
import http.server
import inspect
import os
import re
import shutil
import socket
import threading

import numpy as np
import pytest

import fpn_keras.convert
from fpn_keras.convert import from_torchvision, presets, save_torch_checkpoint
from fpn_keras.convert.presets import PRESETS, DownloadError, PresetError, file_digest
from fpn_keras.convert.resnet_layout import random_resnet_state_dict
from fpn_keras.convert.retinanet_layout import COCO_80_IDS, random_retinanet_state_dict, reorder_anchor_outputs
from fpn_keras.models.detector import HEADS, FPNDetector

NAME = "test/retinanet_seeded"  # a row added for the tests, converted by the real torchvision converter
CLS_BIAS = "head.classification_head.cls_logits.bias"


def test_the_published_rows():
    from fpn_keras.convert import fasterrcnn_layout, mobilenet_v3_layout, retinanet_layout

    urls = {"torchvision/retinanet_resnet50_fpn_coco": retinanet_layout.WEIGHTS_URL,
            "torchvision/fasterrcnn_resnet50_fpn_coco": fasterrcnn_layout.WEIGHTS_URL,
            "torchvision/fasterrcnn_mobilenet_v3_large_fpn_coco": mobilenet_v3_layout.FASTERRCNN_WEIGHTS_URL,
            "torchvision/retinanet_resnet50_fpn_v2_coco": retinanet_layout.WEIGHTS_URL_V2,
            "torchvision/fasterrcnn_resnet50_fpn_v2_coco": fasterrcnn_layout.WEIGHTS_URL_V2}
    d2 = "https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/"
    urls["detectron2/retinanet_R_50_FPN_1x_coco"] = d2 + "retinanet_R_50_FPN_1x/190397773/model_final_bfca0b.pkl"
    urls["detectron2/faster_rcnn_R_50_FPN_1x_coco"] = d2 + "faster_rcnn_R_50_FPN_1x/137257794/model_final_b275ba.pkl"
    assert {name: row["url"] for name, row in PRESETS.items()} == urls
    for name, row in PRESETS.items():
        algorithm, prefix = presets.parse_hash(row["hash"])
        file = presets.file_name(name)
        if name.startswith("torchvision/"):  # torch.hub: <name>-<first 8 hex of the SHA-256>.pth
            assert (algorithm, prefix) == ("sha256", re.fullmatch(r"\w+-([0-9a-f]{8})\.pth", file).group(1))
            assert row["converter"] == "fpn_keras.convert.from_torchvision" and row["checkpoint_arg"] == "weights"
            assert set(row["args"]) <= set(inspect.signature(from_torchvision).parameters)
        else:  # detectron2's model zoo: model_final_<first 6 hex of the MD5>.pkl
            assert (algorithm, prefix) == ("md5", re.fullmatch(r"model_final_([0-9a-f]{6})\.pkl", file).group(1))
            assert row["converter"] == "fpn_keras.convert.from_detectron2"
        assert row["head"] in HEADS and 30.0 < row["coco_ap"] < 50.0 and "80 COCO classes" in row["classes"]
    assert PRESETS["torchvision/retinanet_resnet50_fpn_coco"]["coco_ap"] == 36.4  # torchvision's box_map


def test_cache_paths_and_mirror(monkeypatch, tmp_path):
    name = "torchvision/retinanet_resnet50_fpn_coco"
    monkeypatch.delenv(presets.URL_ENV, raising=False)
    monkeypatch.delenv(presets.HOME_ENV, raising=False)
    assert presets.cache_home() == os.path.expanduser("~/.keras/fpn_keras")
    monkeypatch.setenv(presets.HOME_ENV, str(tmp_path))
    file = "retinanet_resnet50_fpn_coco-eeacb38b.pth"
    assert presets.checkpoint_cache_path(name) == str(tmp_path / "checkpoints" / file)
    assert presets.checkpoint_cache_path(name, "/elsewhere").startswith("/elsewhere/checkpoints/")
    assert presets.preset_url(name) == PRESETS[name]["url"]
    assert presets.preset_url(name, "http://mirror/m/") == "http://mirror/m/retinanet_resnet50_fpn_coco-eeacb38b.pth"
    monkeypatch.setenv(presets.URL_ENV, "http://other")
    assert presets.preset_url(name) == "http://other/retinanet_resnet50_fpn_coco-eeacb38b.pth"
    converted = presets.converted_path(name, "eeacb38b", {})
    assert converted == str(tmp_path / "converted" / "torchvision--retinanet_resnet50_fpn_coco-eeacb38b.keras")
    sized = presets.converted_path(name, "eeacb38b", {"image_size": (128, 128)})
    assert sized != presets.converted_path(name, "eeacb38b", {"image_size": (160, 224)})
    with pytest.raises(ValueError, match="hash must be"):
        presets.parse_hash("crc32:12ab")


def test_unknown_presets_and_each_rows_converter():
    with pytest.raises(PresetError, match=r"unknown preset 'torchvision/retinanet_resnet50_fpn'.*did you mean "
                                          r"'torchvision/retinanet_resnet50_fpn_coco'"):
        FPNDetector.from_preset("torchvision/retinanet_resnet50_fpn")
    assert presets.converter("detectron2/faster_rcnn_R_50_FPN_1x_coco") is fpn_keras.convert.from_detectron2
    assert presets.converter("torchvision/fasterrcnn_resnet50_fpn_v2_coco") is fpn_keras.convert.from_torchvision
    for name, row in PRESETS.items():  # every row's arguments are its converter's
        assert set(row["args"]) | {row["checkpoint_arg"]} <= set(inspect.signature(presets.converter(name)).parameters)


# ---------------------------------------------------------------- download for real


class _Server:
    """http.server on 127.0.0.1 (a free port, its own thread) serving `directory`; `requests`
    lists the paths asked for."""

    def __init__(self, directory):
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=directory))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, state dict, file name, folder): the seeded R50 RetinaNet checkpoint, named as torchvision
    names its files (<model>-<first 8 hex of its SHA-256>.pth)."""
    directory = tmp_path_factory.mktemp("server")
    state = random_retinanet_state_dict(random_resnet_state_dict(50, 14, prefix="backbone.body."), 14)
    save_torch_checkpoint(str(directory / "seeded.pth"), state)
    name = f"retinanet_seeded-{file_digest(str(directory / 'seeded.pth'))[:8]}.pth"
    os.rename(directory / "seeded.pth", directory / name)
    server = _Server(str(directory))
    yield server, state, name, directory
    server.close()


@pytest.fixture
def row(monkeypatch, tmp_path, served):
    """The test row (publisher URL unreachable, the server as the mirror), the cache in tmp_path."""
    server, _, name, _ = served
    server.requests.clear()
    digest = name.rsplit("-", 1)[1].split(".")[0]
    row = dict(PRESETS["torchvision/retinanet_resnet50_fpn_coco"], url=f"https://publisher.invalid/models/{name}",
               hash=f"sha256:{digest}")
    monkeypatch.setitem(PRESETS, NAME, row)
    monkeypatch.setenv(presets.HOME_ENV, str(tmp_path))
    monkeypatch.setenv(presets.URL_ENV, server.url)
    return row


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_download_check_convert_then_cache(row, served, tmp_path, monkeypatch, capsys):
    server, state, name, directory = served
    detector = FPNDetector.from_preset(NAME, image_size=(128, 128))
    assert server.requests == [f"/{name}"]
    assert f"Downloading {server.url}/{name}" in capsys.readouterr().out
    converted = presets.converted_path(NAME, row["hash"][7:], {"image_size": (128, 128)})
    assert _files(tmp_path) == [f"checkpoints/{name}", os.path.relpath(converted, tmp_path)]
    expected = reorder_anchor_outputs(state[CLS_BIAS], 91, COCO_80_IDS)  # the checkpoint's, converted
    np.testing.assert_array_equal(np.asarray(detector.head.head.cls_logits.bias), expected)
    assert detector.image_size == (128, 128) and detector.category_ids == list(COCO_80_IDS)

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(fpn_keras.convert, "from_torchvision", no_conversion)
    again = FPNDetector.from_preset(NAME, image_size=(128, 128))  # the cached .keras
    assert server.requests == [f"/{name}"] and again is not detector
    assert again.neck.conv_padding == "symmetric" and again.image_size == (128, 128)
    for before, after in zip(detector.weights, again.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(after), np.asarray(before))


def test_a_wrong_hash_is_refused_and_not_kept(row, served, tmp_path):
    server, _, name, _ = served
    row["hash"] = "sha256:" + ("0" * 8 if not row["hash"].endswith("0" * 8) else "1" * 8)
    with pytest.raises(DownloadError, match=r"has SHA256 [0-9a-f]{16}\.\.\., not the published [01]{8}\.\.\.: deleted"):
        FPNDetector.from_preset(NAME)
    assert server.requests == [f"/{name}"] and _files(tmp_path) == []


def test_a_file_put_in_the_cache_by_hand_is_used_offline_after_its_hash_check(row, served, tmp_path, monkeypatch):
    server, _, name, directory = served
    monkeypatch.setenv(presets.URL_ENV, "http://127.0.0.1:1")  # offline
    path = presets.checkpoint_cache_path(NAME)
    os.makedirs(os.path.dirname(path))
    shutil.copy(directory / name, path)
    assert presets.download_checkpoint(NAME) == path and server.requests == []
    with open(path, "r+b") as handle:  # one byte changed
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(DownloadError, match=f"{re.escape(path)}: the file .* deleted"):
        presets.download_checkpoint(NAME)
    assert not os.path.exists(path)


def test_offline_names_the_url_the_path_and_the_local_file_option(row, served, tmp_path, monkeypatch):
    server, _, name, _ = served
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    monkeypatch.setenv(presets.URL_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError) as error:
        FPNDetector.from_preset(NAME)
    message = str(error.value)
    assert message.startswith(f"could not download preset '{NAME}' from http://127.0.0.1:{port}/{name} (")
    assert "may be offline" in message and f"Fetch {row['url']} elsewhere" in message
    assert f"put it at {tmp_path / 'checkpoints' / name} " in message
    assert f"FPNDetector.from_preset('{NAME}', checkpoint='/path/to/{name}')" in message
    assert _files(tmp_path) == [] and server.requests == []


def test_a_local_checkpoint_is_converted_without_a_request(row, served, tmp_path, monkeypatch):
    server, state, name, directory = served
    monkeypatch.setenv(presets.URL_ENV, "http://127.0.0.1:1")  # would fail if asked
    local = str(directory / name)
    detector = FPNDetector.from_preset(NAME, checkpoint=local, image_size=(128, 128), progress=False)
    assert server.requests == [] and detector.image_size == (128, 128)
    np.testing.assert_array_equal(np.asarray(detector.head.head.cls_logits.bias),
                                  reorder_anchor_outputs(state[CLS_BIAS], 91, COCO_80_IDS))
    assert [f.split("-")[-2] for f in _files(tmp_path)] == ["local" + row["hash"][7:]]  # converted/, no download
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FPNDetector.from_preset(NAME, checkpoint=str(tmp_path / "missing.pth"))
