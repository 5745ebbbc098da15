"""Compress stage: recipes of compression steps run on the torch model, each measured and recorded.

Steps: L1/FPGM/slimming/progressive pruning, Micro-YOLO swap, distillation, QAT; every step is
checkpointed, so an interrupted run resumes after the last finished step. Recipes load without torch;
``run_recipe``, ``CompressContext`` and ``export_qdq`` import it on first use.

Example:
    >>> from edgekit.compress import load_recipe
    >>> [s.type for s in load_recipe("default").steps]
    ['prune', 'ptq']
"""

from __future__ import annotations

import importlib
from typing import Any

from edgekit.compress.recipe import Recipe, available_recipes, load_recipe, parse_recipe

_LAZY = {
    "run_recipe": "edgekit.compress.runner",
    "CompressContext": "edgekit.compress.context",
    "measure": "edgekit.compress.context",
    "export_qdq": "edgekit.compress.qat",
}

__all__ = ["Recipe", "available_recipes", "load_recipe", "parse_recipe", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekit.compress' has no attribute {name!r}")
