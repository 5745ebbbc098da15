"""Per-layer INT8 sensitivity: which layer hurts the model output most when quantized.

Method: calibrate once, then for each candidate layer build a model in which *only that layer* is
quantized (its weights and its input/output activations) and measure the full model output error
against FP32 on a few calibration images. This costs the same as the leave-one-out alternative
(one ``quantize_static`` from the cached ranges + a few inferences per layer) but measures each
layer's own error without the noise of every other layer's rounding, and the error it reports reads
directly as "how much this layer costs" -- to first order, errors of different layers add up, so
greedily keeping the top-ranked layers in float removes the largest shares of the total.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgekit.core.errors import ConfigError
from edgekit.quantize import graph as qgraph
from edgekit.quantize.calibrators import (
    Calibration,
    as_batch,
    calibration_cache,
    calibration_source,
    prepare_model,
    progress_bar,
    resolve_input_name,
)
from edgekit.quantize.ptq import run_quantize_static


def _mse(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    return float(np.mean([np.mean((g.astype(np.float64) - r) ** 2) for r, g in zip(ref, got, strict=True)]))


def _max_abs(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    return float(max(np.max(np.abs(g.astype(np.float64) - r)) for r, g in zip(ref, got, strict=True)))


METRICS: dict[str, Callable[[list[np.ndarray], list[np.ndarray]], float]] = {
    "output_mse": _mse,
    "output_max_abs": _max_abs,
}


def detection_metric(head: str) -> Callable[[list[np.ndarray], list[np.ndarray]], float]:
    """A sensitivity metric on what detections read: the mean ``|score error|`` of the active anchors.

    The raw output's MSE is dominated by the box pixels of thousands of background anchors; a layer's
    effect on the detections is its effect on the anchors FP32 scores at all (best class score >=
    ``agreement.SCORE_FLOOR``), read through the head's decode (objectness folded in). Outputs that are
    not the detector's 3-D output are ignored.
    """
    from edgekit.backends.contract.agreement import SCORE_FLOOR, active_scores

    def score(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
        errors = []
        for r, g in zip(ref, got, strict=True):
            if np.ndim(r) != 3:
                continue
            a, b = active_scores(r, head), active_scores(g, head)
            rows = a.max(1) >= SCORE_FLOOR
            if rows.any():
                errors.append(float(np.mean(np.abs(a[rows].astype(np.float64) - b[rows]))))
        return float(np.mean(errors)) if errors else 0.0

    return score


def model_outputs(onnx_path: Path, batches: list[np.ndarray], input_name: str) -> list[np.ndarray]:
    """Run a model on each batch and return every output of every run, flattened into one list."""
    from edgekit.export.onnx import ort_session

    session = ort_session(onnx_path)
    return [out for batch in batches for out in session.run(None, {input_name: batch})]


def _candidates(model: object, candidates: list[str] | None) -> list[str]:
    if candidates is None:
        return qgraph.quantizable_nodes(model)
    missing = qgraph.unknown_nodes(model, list(candidates))
    if missing:
        raise ConfigError(
            f"sensitivity candidates not in the model: {', '.join(missing)}",
            "pick names from edgekit.quantize.graph.quantizable_nodes(onnx.load(path))",
        )
    return list(candidates)


def layer_sensitivity(
    fp32_onnx: str | Path,
    calibration: Calibration,
    method: str = "minmax",
    *,
    metric: str | Callable[[list[np.ndarray], list[np.ndarray]], float] = "output_mse",
    candidates: list[str] | None = None,
    num_images: int = 8,
    percentile: float = 99.99,
    per_channel: bool = True,
    reduce_range: bool = False,
    input_name: str | None = None,
    progress: bool = False,
    writer: Callable[..., None] = run_quantize_static,
) -> list[tuple[str, float]]:
    """Rank quantizable layers by the model output error each causes when it alone is INT8.

    Args:
        fp32_onnx: The FP32 model.
        calibration: Preprocessed arrays, or a callable returning a fresh iterable of them. All of them
            set the ranges; the first ``num_images`` are used to measure the error.
        method: Calibration method (minmax, entropy, percentile).
        metric: ``output_mse`` (mean squared error over all outputs), ``output_max_abs``, or a callable
            ``(reference outputs, outputs) -> error`` such as :func:`detection_metric`.
        candidates: Node names to rank (default: every Conv/ConvTranspose/Gemm/MatMul).
        num_images: Images the error is measured on.
        percentile: For ``percentile``.
        per_channel: Per-channel weight scales.
        reduce_range: 7-bit weights. The error is measured with ONNX Runtime on *this* host, so pass
            the setting this host's CPU needs (:func:`edgekit.quantize.form.host_qdq_form`); at full
            range a CPU without VNNI saturates and the ranking reflects its overflow, not the layers.
        input_name: Graph input to feed (default: the first).
        progress: Show progress bars.
        writer: The QDQ layout's single-layer writer (:attr:`edgekit.quantize.form.QdqForm.layer_writer`):
            a layer is ranked in the form the device will run it.

    Returns:
        ``[(node_name, error), ...]`` sorted most sensitive first.

    Example:
        >>> layer_sensitivity("model.onnx", arrays, "minmax")[:2]  # doctest: +SKIP
        [('/head/pred/Conv', 0.41), ('/backbone/0/Conv', 0.002)]
    """
    import onnx

    if not callable(metric) and metric not in METRICS:
        raise ConfigError(f"unknown sensitivity metric {metric!r}", f"use one of {', '.join(METRICS)}")
    measure = metric if callable(metric) else METRICS[metric]
    source = calibration_source(calibration)
    with tempfile.TemporaryDirectory(prefix="edgekit-sensitivity-") as tmp:
        workdir = Path(tmp)
        prepared = prepare_model(Path(fp32_onnx), workdir)
        model = onnx.load(str(prepared))
        names = _candidates(model, candidates)
        feed = resolve_input_name(model, input_name)
        cache, _ = calibration_cache(prepared, source, method, percentile, feed, progress, workdir)
        batches = [as_batch(a) for _, a in zip(range(num_images), source(), strict=False)]
        reference = model_outputs(prepared, batches, feed)
        scores: list[tuple[str, float]] = []
        with progress_bar(progress, "layer sensitivity", len(names)) as advance:
            for index, name in enumerate(names):
                single = workdir / f"single-{index}.onnx"
                writer(prepared, single, cache, method, per_channel, [], [name], reduce_range)
                scores.append((name, measure(reference, model_outputs(single, batches, feed))))
                single.unlink()
                advance()
    return sorted(scores, key=lambda item: item[1], reverse=True)
