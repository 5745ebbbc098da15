"""Compress stage: recipes of compression steps run on the torch model, each measured and recorded.

Steps: L1/FPGM/slimming/progressive pruning, Micro-YOLO swap, distillation, QAT; every step is
checkpointed, so an interrupted run resumes after the last finished step.

Example:
    >>> from edgekit.compress import load_recipe
    >>> [s.type for s in load_recipe("default").steps]
    ['prune', 'ptq']
"""

from edgekit.compress.recipe import Recipe, available_recipes, load_recipe, parse_recipe

__all__ = ["Recipe", "available_recipes", "load_recipe", "parse_recipe"]
