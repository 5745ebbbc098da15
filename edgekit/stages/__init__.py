"""The deploy stages, one module each; the pipeline (:mod:`edgekit.pipeline`) is the only caller.

data/model/reference/compress/export (:mod:`.model`) → quantize for QDQ backends (:mod:`.quantize`)
→ build, where self-quantizing backends make their INT8 (:mod:`.build`) → bench + eval on the device
(:mod:`.bench`). They share a typed :class:`~edgekit.stages.context.RunContext`.
"""

from edgekit.stages.context import RunContext, add_node, eval_tensors, model_stats, stage

__all__ = ["RunContext", "add_node", "eval_tensors", "model_stats", "stage"]
