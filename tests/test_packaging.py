"""setup.cfg: what the package declares, and a wheel that installs and runs on its own.

The first tests read setup.cfg and the package's imports (ast, no install). The last
builds a wheel from this repository, installs it with the default dependencies into a
fresh venv (no system site-packages), and runs `pip check`, `fpn-keras --help` and a
one-step synthetic `fpn-keras train` from a folder outside the repository. It downloads
from the package index (pip's cache makes a second run faster) and fails, never skips,
when the index cannot be reached.
"""

import ast
import configparser
import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fpn_keras"

# Top-level module -> the distribution that installs it.
DISTRIBUTIONS = {
    "tensorflow": "tensorflow",
    "keras": "keras",
    "numpy": "numpy",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "pycocotools": "pycocotools",
    "matplotlib": "matplotlib",
    "tensorflow_datasets": "tensorflow-datasets",
    "ai_edge_litert": "ai-edge-litert",
    "onnx": "onnx",
    "tf2onnx": "tf2onnx",
    "onnxruntime": "onnxruntime",
    "cv2": "opencv-python-headless",
    "jax": "jax",
}
# Declared, used, but never imported by name.
USED_WITHOUT_IMPORT = {
    "tensorboard": "tf.summary.scalar/image (keras.callbacks.TensorBoard in `train`) raise "
                   "TBNotInstalledError without it",
}
# Distributions that all install a `tensorflow/` folder: at most one may be declared.
TENSORFLOW_FOLDER = {"tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel",
                     "tensorflow-macos", "tf-nightly", "tf-nightly-cpu"}


def _name(requirement):
    """'tensorflow[and-cuda]>=2.21; marker' -> 'tensorflow' (PEP 503 normalised)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _lines(value):
    return [line.strip() for line in value.splitlines() if line.strip()]


def _setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def declared():
    """(install_requires names, {extra: names}) with the self-referencing `all` resolved."""
    config = _setup_cfg()
    required = {_name(r) for r in _lines(config["options"]["install_requires"])}
    raw = {extra: _lines(value) for extra, value in config["options.extras_require"].items()}
    extras = {}
    for extra, requirements in raw.items():
        names = set()
        for requirement in requirements:
            inner = re.match(r"fpn[-_]keras\[([^\]]+)\]", requirement)
            if inner:
                for other in inner.group(1).split(","):
                    names |= {_name(r) for r in raw[other.strip()]}
            else:
                names.add(_name(requirement))
        extras[extra] = names
    return required, extras


def _guarded(node, parents):
    """True when the import sits in a function or in a try that catches ImportError."""
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                caught = ast.unparse(handler.type) if handler.type is not None else ""
                if "ImportError" in caught or "ModuleNotFoundError" in caught:
                    return True
    return False


def package_imports():
    """[(file, line, top-level module, guarded)] for every non-stdlib import in fpn_keras/."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                sibling = (path.parent / f"{top}.py").is_file()  # script-style fallback import
                if top in sys.stdlib_module_names or top == "fpn_keras" or sibling:
                    continue
                found.append((path.relative_to(ROOT), node.lineno, top, _guarded(node, parents)))
    return found


def test_every_import_is_declared():
    required, extras = declared()
    optional = set().union(*extras.values())
    problems = []
    for path, line, top, guarded in package_imports():
        distribution = DISTRIBUTIONS.get(top)
        if distribution is None:
            problems.append(f"{path}:{line}: `{top}` is not in DISTRIBUTIONS (add it, and declare "
                            "its distribution in setup.cfg)")
        elif not guarded and distribution not in required:
            problems.append(f"{path}:{line}: `{top}` is imported at module level, but "
                            f"{distribution} is not in install_requires")
        elif guarded and distribution not in required | optional:
            problems.append(f"{path}:{line}: `{top}` ({distribution}) is in no extra and not in "
                            "install_requires")
    assert not problems, "\n".join(problems)


def test_every_requirement_is_used():
    required, _ = declared()
    imported = {DISTRIBUTIONS.get(top) for _, _, top, _ in package_imports()}
    unused = sorted(required - imported - set(USED_WITHOUT_IMPORT))
    assert not unused, f"declared in install_requires but imported nowhere in fpn_keras/: {unused}"
    assert "tqdm" not in required


def test_optional_libraries_are_not_hard_requirements():
    required, extras = declared()
    assert extras["tfds"] == {"tensorflow-datasets"} and "tensorflow-datasets" not in required
    assert extras["onnx"] == {"onnx", "tf2onnx", "onnxruntime"}
    assert extras["video"] == {"opencv-python-headless"} and extras["tflite"] == {"ai-edge-litert"}
    assert extras["all"] == extras["tfds"] | extras["tflite"] | extras["onnx"] | extras["video"]
    # optional imports stay inside functions (or try/except ImportError)
    for path, line, top, guarded in package_imports():
        if DISTRIBUTIONS.get(top) not in required:
            assert guarded, f"{path}:{line}: optional `{top}` imported at module level"


def test_one_tensorflow_distribution():
    """Every requirement that installs a tensorflow/ folder is plain `tensorflow`, so the
    gpu extra (tensorflow[and-cuda]) adds CUDA wheels to the same distribution."""
    config = _setup_cfg()
    lines = _lines(config["options"]["install_requires"])
    for value in config["options.extras_require"].values():
        lines += _lines(value)
    names = {_name(line) for line in lines} & TENSORFLOW_FOLDER
    assert names == {"tensorflow"}
    (gpu,) = _lines(config["options.extras_require"]["gpu"])
    assert gpu.startswith("tensorflow[and-cuda]")


def test_python_requires_matches_keras():
    keras_requires = importlib.metadata.metadata("keras")["Requires-Python"]
    assert keras_requires == ">=3.11"  # keras 3.15; update both when keras moves
    assert _setup_cfg()["options"]["python_requires"] == keras_requires


# ---------------------------------------------------------------- the wheel in a fresh venv

# The cheapest run of the retinanet_synthetic recipe: 2 images of 64x64, one step.
TINY_TRAIN = ["--set", "data.num_train_images=2", "--set", "data.num_val_images=2",
              "--set", "train.batch_size=2", "--set", "train.epochs=1",
              "--set", "train.warmup_steps=0", "--set", "data.image_size=[64,64]",
              "--set", "model.backbone_args.widths=[8,8,8,8]", "--set", "model.fpn_channels=8",
              "--set", "model.head_args.channels=8", "--set", "model.head_args.num_convs=1"]

# In the venv: every module of the installed package imports without the optional
# extras, and a tfds: spec names the extra to install.
CHECK_INSTALLED = """
import importlib, pkgutil, sys
import fpn_keras
print(fpn_keras.__file__)
names = [m.name for m in pkgutil.walk_packages(fpn_keras.__path__, "fpn_keras.")]
for name in names:
    if name != "fpn_keras.__main__":  # runs the CLI
        importlib.import_module(name)
assert "tensorflow_datasets" not in sys.modules
from fpn_keras import data
try:
    data.load("tfds:voc/2007", "train")
except ImportError as error:
    print("tfds error:", error)
print("imported", len(names), "modules")
"""


def _run(command, cwd, env, timeout, what):
    started = time.monotonic()
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    seconds = time.monotonic() - started
    print(f"{what}: {seconds:.0f} s")
    return result


def _check_pip(result):
    """Fails with the reason when a pip command failed, naming the index when it was unreachable."""
    output = result.stdout + result.stderr
    markers = ("No matching distribution", "Could not find a version", "NewConnectionError",
               "Max retries exceeded", "Temporary failure in name resolution", "ConnectTimeout",
               "Network is unreachable")
    if result.returncode != 0 and any(marker in output for marker in markers):
        pytest.fail("pip could not get packages from the package index (is it reachable? this "
                    "test needs network access or a warm pip cache):\n" + output[-3000:])
    assert result.returncode == 0, output[-3000:]


def test_wheel_installs_into_fresh_venv_and_trains(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow", PIP_DISABLE_PIP_VERSION_CHECK="1")
    # Build from a copy of the sources so that the repository gets no build/ or egg-info.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PACKAGE, source / "fpn_keras", ignore=ignore)
    shutil.copytree(ROOT / "recipes", source / "recipes", ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    result = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", source, "-w", wheels],
                  tmp_path, env, 600, "pip wheel")
    _check_pip(result)  # the build backend (setuptools) comes from the index too
    (wheel,) = wheels.glob("fpn_keras-*.whl")

    venv = tmp_path / "venv"
    try:
        # No pip inside (ensurepip costs ~15 s): this pip installs into it with --python.
        result = _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env, 300, "venv")
        assert result.returncode == 0, result.stderr[-3000:]
        python, script = venv / "bin" / "python", venv / "bin" / "fpn-keras"
        pip = [sys.executable, "-m", "pip", "--python", python]
        # --no-compile: no .pyc for TensorFlow's ~2 GB (104 s instead of 232 s here)
        result = _run([*pip, "install", "-q", "--no-compile", wheel], tmp_path, env, 900,
                      "pip install (default extras)")
        _check_pip(result)

        result = _run([*pip, "check"], tmp_path, env, 300, "pip check")
        assert result.returncode == 0, result.stdout + result.stderr
        result = _run([*pip, "list", "--format=freeze"], tmp_path, env, 300, "pip list")
        installed = {_name(line) for line in result.stdout.splitlines()}
        assert installed & TENSORFLOW_FOLDER == {"tensorflow"}
        assert "tensorflow-datasets" not in installed and "tqdm" not in installed

        work = tmp_path / "elsewhere"  # outside the repository: the source tree is not importable
        work.mkdir()
        result = _run([script, "--help"], work, env, 300, "fpn-keras --help")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "train" in result.stdout and "predict" in result.stdout

        result = _run([python, "-c", CHECK_INSTALLED], work, env, 300, "import every module")
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.splitlines()[0].startswith(str(venv))
        assert 'tfds error: the data spec \'tfds:voc/2007\' needs TensorFlow Datasets' in result.stdout
        assert 'pip install "fpn_keras[tfds]"' in result.stdout

        out = work / "run"
        result = _run([script, "train", "--recipe", "retinanet_synthetic", "--out", out, "--quiet",
                       *TINY_TRAIN], work, env, 600, "fpn-keras train (one step)")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        for name in ("model.keras", "metrics.json", "curves.png", "predictions.png"):
            assert (out / name).is_file(), name
        history = (out / "history.csv").read_text().strip().splitlines()
        assert len(history) == 2, history  # header + the one epoch
    finally:
        started = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)  # ~2 GB in ~30,000 files
        print(f"remove the venv: {time.monotonic() - started:.0f} s")
