"""Which ncnn layers INT8 hurts most, ranked by their effect on the detections.

Used when no calibration method keeps a model's detections with the head alone in float (the real
YOLOX of issue 41: ACIQ kept 11 of 13 detections, KL 5). The calibration table is made once; then each
layer in it is quantized *alone* (every other layer float) and the model is run on a few calibration
images. A layer's cost is the mean ``|score error|`` over the anchors FP32 scores at all
(:func:`edgekit.quantize.sensitivity.detection_metric`), the same measure ONNX Runtime's float fallback
ranks by. Errors of different layers add up to first order, so keeping the top of the ranking in float
removes the largest shares of the total.

Measured on ``ddddocr-yolox`` (416 px, 75 quantizable convs, ACIQ, 96 photo crops): the two convs that
read the image rank first (0.136 and 0.130 of an all-INT8 error of 0.187); the top 8 in float keep
13/13 detections at a mean score error of 0.046, the top 16 at 0.017.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgekit.backends.ncnn.calibration import Int8Table
from edgekit.backends.ncnn.convert import run_ncnn_many

Score = Callable[[list[np.ndarray], list[np.ndarray]], float]


def rank_layers(
    param: Path,
    bin_: Path,
    table: Int8Table,
    images: Sequence[np.ndarray],
    score: Score,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[str, float]]:
    """Each layer of ``table`` quantized alone, scored against the fp32 model; worst first.

    Args:
        param: The fp32 ``.param``.
        bin_: Its ``.bin``.
        table: The calibration table of the full INT8 build (its layers are the candidates).
        images: A few preprocessed ``(1, C, H, W)`` calibration images.
        score: ``score(fp32_outputs, int8_outputs)``, larger = worse.
        progress: Called with ``(done, total)`` after each layer.

    Returns:
        ``[(layer, cost), ...]`` sorted by cost, largest first (ties keep graph order).
    """
    from edgekit.backends.ncnn.int8 import quantize_ncnn

    reference = run_ncnn_many(param, bin_, list(images), int8=False, fp16=False)
    names = [name for name in table.activation_scales if name in table.weight_scales]
    costs: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix=".rank.") as tmp:
        one_param, one_bin = Path(tmp) / "one.param", Path(tmp) / "one.bin"
        for done, name in enumerate(names, 1):
            alone = Int8Table({name: table.weight_scales[name]}, {name: table.activation_scales[name]})
            quantize_ncnn(param, bin_, alone, one_param, one_bin)
            costs.append(
                (
                    name,
                    float(
                        score(
                            reference, run_ncnn_many(one_param, one_bin, list(images), int8=True, fp16=False)
                        )
                    ),
                )
            )
            if progress is not None:
                progress(done, len(names))
    order = {name: i for i, name in enumerate(names)}
    return sorted(costs, key=lambda item: (-item[1], order[item[0]]))
