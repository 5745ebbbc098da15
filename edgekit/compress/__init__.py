"""Compress stage: recipes of steps (L1/FPGM/slimming/progressive pruning, Micro-YOLO swap, distillation,
QAT) run on the torch model, each step measured and recorded, checkpointed and resumable.

Example:
    >>> from edgekit.compress import load_recipe
    >>> [s.type for s in load_recipe("default").steps]
    ['prune', 'ptq']
"""

from edgekit.compress.recipe import Recipe, available_recipes, load_recipe, parse_recipe

__all__ = ["Recipe", "available_recipes", "load_recipe", "parse_recipe"]
