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


def test_every_test_named_in_the_robustness_table_exists():
    """docs/robustness.md names the test of each case as tests/test_x.py::test_name (a
    `same` row reuses the row above; a bare test_name after `;` or `,` is in that file)."""
    import ast

    text = open(os.path.join(ROOT, "docs", "robustness.md")).read()
    named = re.findall(r"(tests/\w+\.py)::(\w+)((?:, test_\w+)*)", text)
    assert len(named) > 25
    for path, first, more in named:
        with open(os.path.join(ROOT, path)) as f:
            tests = {node.name for node in ast.walk(ast.parse(f.read())) if isinstance(node, ast.FunctionDef)}
        for name in [first] + re.findall(r"test_\w+", more):
            assert name in tests, f"{path}::{name}"
