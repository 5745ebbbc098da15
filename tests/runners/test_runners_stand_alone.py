"""What runs on a board never imports edgekit: the runners and their cores are pushed alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RUNNERS = Path(__file__).resolve().parents[2] / "edgekit" / "runners"
#: Each backend keeps its runner (and the stdlib cores only it uses) in its own package.
OWNED = sorted((RUNNERS.parent / "backends").glob("*/*_run.py")) + [
    RUNNERS.parent / "backends/tensorrt/trtcore.py"
]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(RUNNERS.glob("*.py")) + OWNED, ids=lambda p: p.name)
def test_a_device_side_file_does_not_import_edgekit(path):
    assert "edgekit" not in _imports(path), f"{path.name} imports edgekit; a board has the runner files only"
