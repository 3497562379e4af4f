"""docs/architecture.md names only modules and functions that exist."""

import importlib
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = open(os.path.join(ROOT, "docs", "architecture.md")).read()


def _module_file(path):
    """'models/rpn.py', 'fpn_keras/postprocess.py' or 'tests/x.py' -> a path under the repository."""
    if path.startswith(("fpn_keras/", "tests/", "bench/")):
        return os.path.join(ROOT, path)
    return os.path.join(ROOT, "fpn_keras", path)


def test_every_file_named_exists():
    paths = set(re.findall(r"(?<![{,\w/])((?:[a-z_]+/)*[a-z_]+\.py)\b", TEXT))
    assert len(paths) > 20
    for path in sorted(paths):
        assert os.path.isfile(_module_file(path)), path
    for group in re.findall(r"data/\{([a-z,]+)\}\.py", TEXT):
        for name in group.split(","):
            assert os.path.isfile(os.path.join(ROOT, "fpn_keras", "data", name + ".py")), name


def test_every_module_attribute_named_exists():
    checked = 0
    for module, attribute in set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+)\.([A-Za-z_]\w*)", TEXT)):
        if attribute == "py":
            continue
        dotted = "fpn_keras." + module.replace("/", ".")
        try:
            imported = importlib.import_module(dotted)
        except ImportError:
            continue  # not a module path (prose in backticks)
        assert hasattr(imported, attribute), f"{dotted}.{attribute}"
        checked += 1
    assert checked >= 10
