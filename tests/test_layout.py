"""The layout's rule for backends: no module outside ``edgekit/backends/`` switches on a backend's name.

A backend's facts are attributes and methods of its class (or modules its class names); code elsewhere
asks the backend. Help texts and docstrings may mention a backend as an example, so only names used as
values are counted: compared with (``==``, ``in``), used as a dict key, or passed as a choice.
"""

from __future__ import annotations

import ast
from pathlib import Path

from edgekit.core.registry import BACKENDS

ROOT = Path(__file__).resolve().parents[1] / "edgekit"
#: The registry is the one place that lists the backends (one line each).
ALLOWED = {ROOT / "core" / "registry.py"}


def _switches(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    found = []
    # ``tools={"onnxruntime": version}``: the library a step used (ONNX Runtime's quantizer), not a backend
    tools = {id(k.value) for k in ast.walk(tree) if isinstance(k, ast.keyword) and k.arg == "tools"}
    for node in ast.walk(tree):
        values: list[ast.AST] = []
        if isinstance(node, ast.Compare):
            values = [node.left, *node.comparators]
            for comp in node.comparators:
                if isinstance(comp, (ast.Tuple, ast.List, ast.Set)):
                    values += comp.elts
        elif isinstance(node, ast.Dict) and id(node) not in tools:
            values = [k for k in node.keys if k is not None]
        elif isinstance(node, ast.keyword) and node.arg == "choices":
            values = list(getattr(node.value, "elts", []))
        found += [(v.lineno, v.value) for v in values if isinstance(v, ast.Constant) and v.value in names]
    return found


def _offenders(find, names: set[str]) -> list[str]:
    """``path:line: name`` for each place ``find`` reports in a module outside ``backends/``."""
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.is_relative_to(ROOT / "backends") or path in ALLOWED:
            continue
        for line, name in find(ast.parse(path.read_text()), names):
            offenders.append(f"{path.relative_to(ROOT.parent)}:{line}: {name!r}")
    return offenders


def test_no_module_outside_backends_switches_on_a_backend_name():
    names = set(BACKENDS.names()) | {"tflite"}  # tflite: the TFLite Micro backend's file format
    offenders = _offenders(_switches, names)
    assert not offenders, "backend names switched on outside edgekit/backends/:\n" + "\n".join(offenders)


def _named(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    """Every string constant that is a backend's name (any case), but docstrings and ``tools=`` records."""
    skip = {
        id(n)
        for k in ast.walk(tree)
        if isinstance(k, ast.keyword) and k.arg == "tools"
        for n in ast.walk(k.value)
    }
    skip |= {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}  # docstrings
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
        and node.value.lower() in names
    ]


def test_no_module_outside_backends_names_a_backend_in_its_code():
    """Stricter than switching: no default, tuple or argument outside ``backends/`` names a backend either
    (the registry lists them, and a backend's package holds what is its own)."""
    offenders = _offenders(_named, {n.lower() for n in BACKENDS.names()} | {"tflite"})
    assert not offenders, "backend names outside edgekit/backends/:\n" + "\n".join(offenders)
