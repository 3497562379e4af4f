"""COCO-trained presets: a published checkpoint, downloaded once, checked, converted once.

`FPNDetector.from_preset(name)` (= `from_preset`) returns the detector of a row of
PRESETS. The files live under the cache folder `cache_home()`: $FPN_KERAS_HOME, else
~/.keras/fpn_keras:

  <home>/checkpoints/<file name of the URL>        the published checkpoint, as downloaded
  <home>/converted/<preset>-<hash>[-<args>].keras  the converted FPNDetector

A second call loads the converted .keras (no download, no conversion). A download goes
to `<file>.part`, is checked against the row's published hash, then renamed: a file with
the wrong hash is deleted, never left in the cache. Offline, the error names the URL and
the exact path to put the file at; a local file also works:
`from_preset(name, checkpoint="/path/file.pth")` (converted with the row's converter,
its hash not checked: a fine-tuned checkpoint in the same layout is fine).

A mirror of the files (flat, by file name) replaces the publishers' hosts with
`base_url=` or the environment variable FPN_KERAS_PRESET_URL.

A row is plain data:
  url          the publisher's URL of the checkpoint
  hash         "<algorithm>:<hex prefix>" that the file's digest must start with. torchvision
               publishes the first 8 hex digits of the SHA-256 in the file name
               (torch.hub's check_hash convention); detectron2's model zoo names its files
               model_final_<first 6 hex digits of the MD5>.pkl (its convert_to_model_zoo script)
  converter    "module.function" called as converter(**args, <checkpoint_arg>=path, **kwargs)
  checkpoint_arg, args   see converter
  head         the head's name in models.detector.HEADS (recipes' model.head)
  coco_ap      box AP on COCO val2017 that the publisher reports for the checkpoint
  classes      the class layout of the converted detector
To add a preset, add a row (its converter is named by module path and imported when the
row is used).
"""

import hashlib
import http.client
import importlib
import json
import os
import shutil
import urllib.request

HOME_ENV = "FPN_KERAS_HOME"
URL_ENV = "FPN_KERAS_PRESET_URL"

_COCO_80 = "80 COCO classes (COCO_CLASS_NAMES); category_ids: their COCO ids 1..90"
_TORCHVISION = "fpn_keras.convert.from_torchvision"
_DETECTRON2 = "fpn_keras.convert.from_detectron2"
_D2_URL = "https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/"

PRESETS = {
    "torchvision/retinanet_resnet50_fpn_coco": {
        "url": "https://download.pytorch.org/models/retinanet_resnet50_fpn_coco-eeacb38b.pth",
        "hash": "sha256:eeacb38b", "converter": _TORCHVISION, "checkpoint_arg": "weights",
        "args": {"model": "retinanet_resnet50_fpn", "num_classes": 80}, "head": "retinanet",
        "coco_ap": 36.4, "classes": _COCO_80,  # torchvision RetinaNet_ResNet50_FPN_Weights.COCO_V1
    },
    "torchvision/fasterrcnn_resnet50_fpn_coco": {
        "url": "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
        "hash": "sha256:258fb6c6", "converter": _TORCHVISION, "checkpoint_arg": "weights",
        "args": {"model": "fasterrcnn_resnet50_fpn", "num_classes": 80}, "head": "faster_rcnn",
        "coco_ap": 37.0, "classes": _COCO_80 + "; softmax background last",  # FasterRCNN_..._Weights.COCO_V1
    },
    "torchvision/fasterrcnn_mobilenet_v3_large_fpn_coco": {
        "url": "https://download.pytorch.org/models/fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth",
        "hash": "sha256:fb6a3cc7", "converter": _TORCHVISION, "checkpoint_arg": "weights",
        "args": {"model": "fasterrcnn_mobilenet_v3_large_fpn", "num_classes": 80}, "head": "faster_rcnn",
        "coco_ap": 32.8, "classes": _COCO_80 + "; softmax background last",  # ..._Weights.COCO_V1
    },
    "torchvision/retinanet_resnet50_fpn_v2_coco": {
        "url": "https://download.pytorch.org/models/retinanet_resnet50_fpn_v2_coco-5905b1c5.pth",
        "hash": "sha256:5905b1c5", "converter": _TORCHVISION, "checkpoint_arg": "weights",
        "args": {"model": "retinanet_resnet50_fpn_v2", "num_classes": 80}, "head": "retinanet",
        "coco_ap": 41.5, "classes": _COCO_80,  # RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1
    },
    "torchvision/fasterrcnn_resnet50_fpn_v2_coco": {
        "url": "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth",
        "hash": "sha256:dd69338a", "converter": _TORCHVISION, "checkpoint_arg": "weights",
        "args": {"model": "fasterrcnn_resnet50_fpn_v2", "num_classes": 80}, "head": "faster_rcnn",
        "coco_ap": 46.7, "classes": _COCO_80 + "; softmax background last",  # ..._V2_Weights.COCO_V1
    },
    "detectron2/retinanet_R_50_FPN_1x_coco": {
        "url": _D2_URL + "retinanet_R_50_FPN_1x/190397773/model_final_bfca0b.pkl",
        "hash": "md5:bfca0b", "converter": _DETECTRON2, "checkpoint_arg": "checkpoint",
        "args": {"config_name": "COCO-Detection/retinanet_R_50_FPN_1x"}, "head": "retinanet",
        "coco_ap": 37.4, "classes": _COCO_80,  # detectron2 MODEL_ZOO.md
    },
    "detectron2/faster_rcnn_R_50_FPN_1x_coco": {
        "url": _D2_URL + "faster_rcnn_R_50_FPN_1x/137257794/model_final_b275ba.pkl",
        "hash": "md5:b275ba", "converter": _DETECTRON2, "checkpoint_arg": "checkpoint",
        "args": {"config_name": "COCO-Detection/faster_rcnn_R_50_FPN_1x"}, "head": "faster_rcnn",
        "coco_ap": 37.9, "classes": _COCO_80 + "; softmax background last",  # detectron2 MODEL_ZOO.md
    },
}
HASH_ALGORITHMS = ("sha256", "md5")


class PresetError(ValueError):
    """An unknown preset name, or a preset whose converter is not available."""


class DownloadError(RuntimeError):
    """A preset's checkpoint could not be downloaded (offline, dead mirror) or has the
    wrong hash; the message says what to fetch and where to put it."""


def preset(name):
    """The PRESETS row of `name`; PresetError naming the presets otherwise."""
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(str(name), list(PRESETS), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PresetError(f"unknown preset {name!r}{hint}; choose from {list(PRESETS)}")
    return PRESETS[name]


def cache_home(cache_dir=None):
    """The cache folder: `cache_dir`, else $FPN_KERAS_HOME, else ~/.keras/fpn_keras."""
    return os.path.expanduser(cache_dir or os.environ.get(HOME_ENV) or os.path.join("~", ".keras", "fpn_keras"))


def file_name(name):
    """The file name of preset `name`'s checkpoint (the last part of its URL)."""
    return preset(name)["url"].rsplit("/", 1)[1]


def checkpoint_cache_path(name, cache_dir=None):
    """Where preset `name`'s checkpoint is (or is to be put): <home>/checkpoints/<file name>."""
    return os.path.join(cache_home(cache_dir), "checkpoints", file_name(name))


def preset_url(name, base_url=None):
    """The URL to download preset `name` from: its publisher's, or `base_url` (else
    $FPN_KERAS_PRESET_URL), a mirror holding the files by name, + "/" + the file name."""
    base_url = base_url or os.environ.get(URL_ENV)
    return preset(name)["url"] if not base_url else base_url.rstrip("/") + "/" + file_name(name)


def parse_hash(spec):
    """"sha256:eeacb38b" -> ("sha256", "eeacb38b")."""
    algorithm, _, prefix = str(spec).partition(":")
    if algorithm not in HASH_ALGORITHMS or not prefix or any(c not in "0123456789abcdef" for c in prefix):
        raise ValueError(f"hash must be '<{'|'.join(HASH_ALGORITHMS)}>:<hex prefix>', received {spec!r}")
    return algorithm, prefix


def file_digest(path, algorithm="sha256"):
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_hash(path, spec, source):
    """Raises DownloadError (after deleting `path`) unless the file's digest starts
    with the prefix of `spec` ("sha256:eeacb38b"); `source`: where the file came from."""
    algorithm, prefix = parse_hash(spec)
    digest = file_digest(path, algorithm)
    if not digest.startswith(prefix):
        size = os.path.getsize(path)
        os.remove(path)
        raise DownloadError(f"{source}: the file ({size} bytes) has {algorithm.upper()} {digest[:16]}..., "
                            f"not the published {prefix}...: deleted (a partial or altered download?); "
                            "try again, or pass a file you trust as checkpoint=")


def _offline_message(name, url, error, cache_dir):
    return (f"could not download preset {name!r} from {url} ({error}); this machine may be offline. "
            f"Fetch {preset(name)['url']} elsewhere and put it at {checkpoint_cache_path(name, cache_dir)} "
            f"(from_preset({name!r}) then finds it), or pass the file: "
            f"FPNDetector.from_preset({name!r}, checkpoint='/path/to/{file_name(name)}')")


def download(url, path, hash_spec, timeout=60.0, progress=True):
    """Downloads `url` to `path` through `path`.part (a progress bar on stdout), checks
    its hash (`check_hash`) and renames it into place. URL errors propagate (urllib)."""
    import keras

    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = path + ".part"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            size = response.headers.get("Content-Length")
            bar = keras.utils.Progbar(int(size) if size else None, unit_name="B") if progress else None
            done = 0
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                done += len(chunk)
                if bar is not None:
                    bar.update(done)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    check_hash(partial, hash_spec, url)
    os.replace(partial, path)
    return path


def download_checkpoint(name, cache_dir=None, base_url=None, progress=True):
    """The local path of preset `name`'s checkpoint, downloaded into the cache if it
    is not there yet; hash-checked either way (a file put there by hand too). DownloadError
    with the offline message."""
    path = checkpoint_cache_path(name, cache_dir)
    if os.path.isfile(path):
        check_hash(path, preset(name)["hash"], path)
        return path
    url = preset_url(name, base_url)
    if progress:
        print(f"Downloading {url} to {path}")
    try:
        return download(url, path, preset(name)["hash"], progress=progress)
    except (OSError, http.client.HTTPException, ValueError) as error:  # URLError, refused, timeout, bad URL
        raise DownloadError(_offline_message(name, url, error, cache_dir)) from error


def converter(name):
    """The converter function of preset `name` (its "converter" resolved)."""
    module, _, function = preset(name)["converter"].rpartition(".")
    return getattr(importlib.import_module(module), function)


def converted_path(name, checkpoint_hash, kwargs, cache_dir=None):
    """<home>/converted/<preset, "/" -> "--">-<checkpoint hash>[-<8 hex of the kwargs>].keras."""
    stem = f"{name.replace('/', '--')}-{checkpoint_hash}"
    if kwargs:
        stem += "-" + hashlib.sha256(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join(cache_home(cache_dir), "converted", stem + ".keras")


def from_preset(name, cache_dir=None, checkpoint=None, base_url=None, progress=True, **kwargs):
    """The FPNDetector of preset `name` (a key of PRESETS), weights loaded.

    cache_dir: the cache folder (default `cache_home()`). checkpoint: a local checkpoint
    file to convert instead of downloading (no hash check). base_url: a mirror (see the
    module docstring). kwargs: the converter's other arguments (torchvision: image_size,
    norm_epsilon, num_classes), part of the converted file's cache key.
    """
    import keras

    row = preset(name)
    convert = converter(name)
    if checkpoint is not None:
        if not os.path.isfile(str(checkpoint)):
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
        key = "local" + file_digest(checkpoint)[:8]
    else:
        key = parse_hash(row["hash"])[1]
    cached = converted_path(name, key, kwargs, cache_dir)
    if os.path.isfile(cached):
        import fpn_keras.build  # noqa: F401 - registers every serialisable class

        return keras.saving.load_model(cached, safe_mode=True)
    path = checkpoint if checkpoint is not None else download_checkpoint(name, cache_dir, base_url, progress)
    detector = convert(**{**row["args"], **kwargs, row["checkpoint_arg"]: path})
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    partial = cached[:-len(".keras")] + ".part.keras"  # keras.save wants the .keras suffix
    detector.save(partial)
    shutil.move(partial, cached)
    return detector


__all__ = ["DownloadError", "PRESETS", "PresetError", "cache_home", "checkpoint_cache_path", "download",
           "download_checkpoint", "from_preset", "preset", "preset_url"]
