"""Auto-calibration: pick the cheapest INT8 variant whose mAP stays within a drop budget.

Schedule: (1) every calibration method with all layers INT8; (2) if none is within the budget, take
the best method and keep its most sensitive layers (by :func:`layer_sensitivity`) in float, one more
at a time, until the budget holds or ``max_float_layers`` is reached. Every candidate tried is kept
for the report; accuracy is always measured by the caller's ``evaluate``, never by tensor error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.core.errors import BuildError, ConfigError
from edgekit.quantize.calibrators import METHODS, Calibration, calibration_source
from edgekit.quantize.ptq import QuantResult, compare_calibrators, quantize_int8
from edgekit.quantize.sensitivity import layer_sensitivity

Evaluate = Callable[[Path], dict[str, float]]


@dataclass
class AutoResult:
    """Outcome of :func:`auto_calibrate`.

    Attributes:
        chosen: The selected candidate (see :func:`auto_calibrate` for its keys).
        candidates: Every candidate tried, in the order tried.
        passed: Whether ``chosen`` is within the drop budget (False: the best one found, failing).
        sensitivity: The layer ranking used for float fallback (empty if not needed).
        warnings: Calibrator degeneracy warnings (see :func:`compare_calibrators`).
    """

    chosen: dict[str, Any]
    candidates: list[dict[str, Any]]
    passed: bool
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    results: dict[str, QuantResult] = field(default_factory=dict, repr=False)

    @property
    def chosen_result(self) -> QuantResult:
        """The :class:`QuantResult` of the chosen candidate (its file is ``chosen["path"]``)."""
        return self.results[self.chosen["name"]]


@dataclass
class _Search:
    fp32_onnx: Path
    source: Callable[[], Any]
    evaluate: Evaluate
    baseline: float
    max_drop: float
    workdir: Path
    progress: bool
    candidates: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, QuantResult] = field(default_factory=dict)
    quantizer: Callable[..., QuantResult] = quantize_int8

    def try_variant(
        self, method: str, keep_float: list[str], reduce_range: bool
    ) -> tuple[dict[str, Any], QuantResult]:
        """Quantize one variant, evaluate it, record and return the candidate."""
        name = f"int8-{method}" + ("-w7" if reduce_range else "")
        name += f"-float{len(keep_float)}" if keep_float else ""
        result = self.quantizer(
            self.fp32_onnx,
            self.workdir / f"{name}.onnx",
            self.source,
            method=method,
            reduce_range=reduce_range,
            keep_float=keep_float or None,
            progress=self.progress,
        )
        try:
            scores = self.evaluate(result.path)
        except BuildError as exc:  # the target refused this variant (e.g. its FP32 check): try the next
            candidate = {"name": name, "method": method, "keep_float": list(keep_float)}
            candidate |= {"reduce_range": reduce_range, "within": False, "error": exc.message}
            self.candidates.append(candidate)
            return candidate, result
        drop = (self.baseline - float(scores["map50_95"])) * 100.0
        candidate = {
            "name": name,
            "method": method,
            "keep_float": list(keep_float),
            "reduce_range": reduce_range,
            "map50": float(scores.get("map50", float("nan"))),
            "map50_95": float(scores["map50_95"]),
            "size_bytes": result.size_bytes,
            "drop": round(drop, 4),
            "within": drop <= self.max_drop,
            "path": str(result.path),
            "scales_sha256": result.scales_sha256,
            "latency_ms_p50": scores.get("latency_ms_p50"),
            "checked_on": scores.get("checked_on"),
        }
        self.candidates.append(candidate)
        self.results[name] = result
        return candidate, result


def _check_args(methods: tuple[str, ...], max_drop: float, max_float_layers: int) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown or no calibration methods: {unknown}", f"use some of {METHODS}")
    if max_drop < 0 or max_float_layers < 0:
        raise ConfigError("max_drop and max_float_layers must be >= 0", "e.g. max_drop=1.0 (mAP points)")


REFUSED_HINT = (
    "keep more layers in float (a larger max_float_layers), calibrate on more images, "
    "or deploy this model in float (a target YAML with precision: fp32 or fp16)"
)


def choose(
    candidates: list[dict[str, Any]],
    what: str = "INT8 candidate passed the build",
    hint: str = REFUSED_HINT,
) -> tuple[dict[str, Any], bool]:
    """Cheapest within-budget candidate (fewest float layers, then smallest, then best mAP), else the best.

    Candidates without ``keep_float`` (a self-quantizing backend's methods) count as all-INT8. Candidates
    with an ``error`` (the target refused to build them) are never chosen; if every one has, one BuildError
    ``"no {what}: name: error; ..."`` with ``hint``.
    """
    built = [c for c in candidates if "error" not in c]
    if not built:
        errors = "; ".join(f"{c['name']}: {c['error']}" for c in candidates)
        raise BuildError(f"no {what}: {errors}", hint)
    within = [c for c in built if c["within"]]
    if within:
        return min(
            within, key=lambda c: (len(c.get("keep_float", ())), c["size_bytes"], -c["map50_95"])
        ), True
    return max(built, key=lambda c: c["map50_95"]), False


def auto_calibrate(
    fp32_onnx: str | Path,
    calibration: Calibration,
    evaluate: Evaluate,
    *,
    max_drop: float,
    baseline_map50_95: float,
    methods: tuple[str, ...] = METHODS,
    weight_ranges: tuple[bool, ...] = (False,),
    max_float_layers: int = 4,
    workdir: str | Path,
    progress: bool = True,
    quantizer: Callable[..., QuantResult] = quantize_int8,
) -> AutoResult:
    """Search calibration methods and float fallbacks for an INT8 model within ``max_drop``.

    Args:
        fp32_onnx: The FP32 model.
        calibration: Preprocessed arrays, or a callable returning a fresh iterable of them.
        evaluate: Called with a QDQ model path; returns at least ``{"map50_95": float}`` (and
            ``"map50"`` if known). The pipeline supplies it (build for the target, run, score).
        max_drop: Allowed drop in mAP50-95 *points* (1.0 = 0.010 absolute).
        baseline_map50_95: mAP50-95 (0..1) of the FP32 model being quantized (``max_drop`` is against it).
        methods: Calibration methods to try.
        quantizer: The QDQ writer of the target's layout (:attr:`QdqForm.quantizer`).
        weight_ranges: ``reduce_range`` settings to try with each method: ``(False,)`` or ``(True,)``
            where the device's form is settled, ``(True, False)`` where both may win (a CPU without
            VNNI: 7-bit weights avoid saturation, 8-bit ones have twice the levels).
        max_float_layers: Most layers the float fallback may keep in float.
        workdir: Folder for every candidate model (kept for the report).
        progress: Show progress bars.

    Returns:
        An :class:`AutoResult`; each candidate is ``{name, method, keep_float, map50, map50_95,
        size_bytes, drop, within, path, scales_sha256, reduce_range}`` with ``drop`` in mAP points.

    Example:
        >>> res = auto_calibrate("m.onnx", arrays, evaluate, max_drop=1.0, baseline_map50_95=0.84,
        ...                      workdir="runs/x/quant")  # doctest: +SKIP
        >>> res.chosen["name"], res.passed  # doctest: +SKIP
        ('int8-minmax-float1', True)
    """
    _check_args(tuple(methods), max_drop, max_float_layers)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    source = calibration_source(calibration)
    search = _Search(Path(fp32_onnx), source, evaluate, baseline_map50_95, max_drop, workdir, progress)
    search.quantizer = quantizer
    if not weight_ranges:
        raise ConfigError("auto_calibrate needs at least one weight range", "e.g. weight_ranges=(False,)")
    results = [search.try_variant(m, [], rr)[1] for m in methods for rr in dict.fromkeys(weight_ranges)]
    warnings = compare_calibrators(results)
    if any(c["within"] for c in search.candidates) or max_float_layers == 0:
        chosen, passed = choose(search.candidates)
        return AutoResult(chosen, search.candidates, passed, warnings=warnings, results=search.results)
    built = [c for c in search.candidates if "error" not in c]  # none built: rank layers for the first
    best = max(built, key=lambda c: c["map50_95"]) if built else search.candidates[0]
    rr = best["reduce_range"]
    ranking = layer_sensitivity(
        search.fp32_onnx, search.source, best["method"], reduce_range=rr, progress=progress
    )
    for count in range(1, min(max_float_layers, len(ranking)) + 1):
        candidate, _ = search.try_variant(best["method"], [name for name, _ in ranking[:count]], rr)
        if candidate["within"]:
            break
    chosen, passed = choose(search.candidates)
    return AutoResult(
        chosen, search.candidates, passed, sensitivity=ranking, warnings=warnings, results=search.results
    )
