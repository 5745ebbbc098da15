"""Which of NNCF's activation quantizers cost the detections most, measured in OpenVINO itself.

Used when no range estimator keeps a model's detections with the head alone in float. NNCF's INT8 model
is made once; each activation ``FakeQuantize`` of it is then kept *alone* (every other activation
quantizer bypassed, so the layers they fed compute in float) and the compiled model is run on a few
calibration images. A quantizer's cost is the mean ``|score error|`` over the anchors FP32 scores at all
(:func:`edgekit.quantize.sensitivity.detection_metric`), the measure ONNX Runtime's and ncnn's float
fallbacks rank by. The build then bypasses the costliest quantizers in its INT8 model: the layers they
fed run in float on int8-rounded weights.

The unit is the activation quantizer, not the convolution: NNCF shares one quantizer between the
branches a split or a concat feeds, and the weights are already stored as int8 in the model it returns,
so bypassing the activation quantizer is what puts a layer's arithmetic back to float.

Measured on ``ddddocr-yolox`` (416 px, 96 photo crops, mean_minmax, head in float): 13 of 13 FP32
detections kept at a mean score error of 0.057 with every quantizer on; see the README's real-model table
for the ranked builds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Score = Callable[[list[np.ndarray], list[np.ndarray]], float]


def activation_quantizers(model: Any) -> list[str]:
    """Names of the model's ``FakeQuantize`` ops on activations (not on constant weights), graph order."""
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        if _constant(op.input_value(0).get_node()):
            continue
        names.append(op.get_friendly_name())
    return names


def _constant(node: Any) -> bool:
    """A constant, possibly behind the Convert / Multiply / Subtract of compressed weights."""
    seen = 0
    while seen < 4:
        kind = node.get_type_name()
        if kind == "Constant":
            return True
        if kind not in ("Convert", "Multiply", "Subtract", "Reshape"):
            return False
        node, seen = node.input_value(0).get_node(), seen + 1
    return False


def bypass(model: Any, names: set[str]) -> int:
    """Bypass the named ``FakeQuantize`` ops in place (their consumers read the float input); how many."""
    done = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and op.get_friendly_name() in names:
            source = op.input_value(0)
            for target in list(op.output(0).get_target_inputs()):
                target.replace_source_output(source)
            done += 1
    if done:
        model.validate_nodes_and_infer_types()
    return done


def rank_quantizers(
    int8_model: Any,
    reference: Sequence[np.ndarray],
    images: Sequence[np.ndarray],
    score: Score,
    progress: Callable[[], None] | None = None,
) -> list[tuple[str, float]]:
    """Each activation quantizer of ``int8_model`` kept alone, scored against FP32; worst first.

    Args:
        int8_model: NNCF's quantized ``openvino.Model`` (not modified).
        reference: The FP32 model's first output on each of ``images``.
        images: A few preprocessed ``(1, C, H, W)`` float32 calibration images.
        score: ``score(fp32_outputs, int8_outputs)``, larger = worse.
        progress: Called after each quantizer.

    Returns:
        ``[(quantizer name, cost), ...]`` sorted by cost, largest first (ties keep graph order).
    """
    import openvino as ov

    core = ov.Core()
    names = activation_quantizers(int8_model)
    costs: list[tuple[str, float]] = []
    for name in names:
        alone = int8_model.clone()
        bypass(alone, set(names) - {name})
        compiled = core.compile_model(alone, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        outputs = [np.array(compiled({0: x})[0], copy=True) for x in images]
        costs.append((name, score(list(reference), outputs)))
        if progress is not None:
            progress()
    order = {name: i for i, name in enumerate(names)}
    return sorted(costs, key=lambda item: (-item[1], order[item[0]]))
