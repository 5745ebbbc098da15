"""The post-build check every artifact passes: its outputs on fixed inputs against the FP32 model's.

Converters exit 0 on models that compute the wrong thing (research: pnnx lost a DFL head's axes,
MNN's ADMM wrote zeros), so no figure is reported for an artifact before this check: the same fixed
inputs (calibration images when a set is at hand, else seeded noise) go through ONNX Runtime on the
FP32 ONNX and through the backend's own runtime on this host.

A detector is judged by its detections (:mod:`edgekit.backends.contract.agreement`): both outputs are decoded
and NMS'd, and the artifact must keep FP32's detections with close scores, within the precision's
tolerance. Raw-tensor figures (cosine, maximum error, the box and score columns' own cosines) are
recorded for diagnosis; at fp32 and fp16 they are checked too (a converter must compute the same
thing everywhere), but an INT8 model is never rejected for errors in anchors no detection uses.
Where FP32 makes no detection on the check images, the INT8 check falls back to the scores of the
anchors FP32 scores at all (MNN 3.6.1's KL zeroed every score while the whole output read 0.97).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.errors import BuildError

_HINTS = {
    "int8": "try --calibrator auto (every calibration method, then the most sensitive layers kept in float), "
    "or calibrate on more images (--calib)",
    "fp16": "build fp32: a layer of this model overflows or loses too much in fp16",
    "fp32": "the converter changed what the model computes; try the other input path (torch vs ONNX) "
    "or report the op",
}


def is_qdq(model: Any) -> bool:
    """True when the ONNX graph carries QuantizeLinear nodes (a QDQ INT8 model)."""
    return any(node.op_type == "QuantizeLinear" for node in model.graph.node)


def detect_output_head(model: Any) -> str:
    """The head layout read from the first output's shape (an ambiguous shape is a ModelError)."""
    from edgekit.models.user import detect_graph_head

    return detect_graph_head(model)


def fixed_inputs(artifact: Any, calib: Any, count: int) -> tuple[list[np.ndarray], str]:
    """Calibration images in the artifact's preprocessing, or seeded noise in its value range."""
    spec = artifact.preprocess
    if calib is not None:
        return list(calib.arrays(limit=count, spec=spec)), f"{count} calibration images"
    rng = np.random.default_rng(0)
    shape = [int(d) for d in artifact.meta["input"]["shape"]]
    mean, std = np.array(spec.mean), np.array(spec.std)
    axis = (1, 3, 1, 1) if spec.layout == "NCHW" else (1, 1, 1, 3)
    noise = [rng.random(shape, dtype=np.float32) for _ in range(count)]
    return [((x - mean.reshape(axis)) / std.reshape(axis)).astype(np.float32) for x in noise], "seeded noise"


def _cosine(r: np.ndarray, g: np.ndarray) -> float:
    denom = np.linalg.norm(r) * np.linalg.norm(g)
    return float(r @ g / denom) if denom > 0 else float(np.array_equal(r, g))


def detector_parts(output: np.ndarray, head: str | None) -> dict[str, np.ndarray]:
    """Split a decoded detector output into its box and score columns (``{}`` if it is not one).

    Box pixels dominate a whole-output cosine: a quantizer that zeroes every score still scores
    ~0.97 on it, so boxes and scores are compared on their own.
    """
    if head not in ("yolov5", "yolov8", "yolox") or output.ndim != 3:
        return {}
    rows = output[0].T if head == "yolov8" else output[0]
    if rows.shape[-1] < 5:
        return {}
    return {"boxes": rows[:, :4], "scores": rows[:, 4:]}


def compare(ref: np.ndarray, got: np.ndarray, head: str | None = None) -> dict[str, float]:
    """Cosine similarity and maximum errors of ``got`` against ``ref`` (flattened, float64).

    With a detector ``head``, also the cosine of the box and of the score columns alone.
    """
    r, g = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    cosine = _cosine(r, g)
    max_abs = float(np.max(np.abs(g - r))) if r.size else 0.0
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    out = {"cosine": cosine, "max_abs": max_abs, "rel_error": max_abs / scale if scale > 0 else max_abs}
    ref_parts, got_parts = detector_parts(ref, head), detector_parts(got, head)
    for part, values in ref_parts.items():
        out[f"{part}_cosine"] = _cosine(
            values.astype(np.float64).ravel(), got_parts[part].astype(np.float64).ravel()
        )
    return out


def _reference_outputs(reference: Path, inputs: list[np.ndarray]) -> list[list[np.ndarray]]:
    from edgekit.export.onnx import ort_session

    session = ort_session(reference)
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x}) for x in inputs]


def where_checked(backend: Any) -> str:
    """Where ``backend``'s check outputs come from: this host, or the board its checks run on."""
    from edgekit.backends.contract import board_check

    return board_check.where() if getattr(backend, "checks_on_board", False) else "this host"


def _worst(rows: list[dict[str, float]]) -> dict[str, float]:
    """The worst value of every figure over the inputs (lowest cosines, highest errors)."""
    return {k: (min if "cosine" in k else max)(r[k] for r in rows) for k in rows[0]}


def check_parity(backend: Any, artifact: Any, reference: Path | None, calib: Any = None) -> dict[str, Any]:
    """Compare the artifact with its FP32 reference; return the record, raise BuildError on divergence.

    Returns:
        ``{"checked", "inputs", "tolerance", "outputs": [{name, shape, cosine, max_abs, rel_error,
        boxes_cosine, scores_cosine}]}``
        with the worst value over the inputs; ``{"checked": False, "reason"}`` without a reference.

    Raises:
        BuildError: Naming the first output whose shape, cosine or error is out of tolerance.
    """
    from edgekit.backends.contract.base import PARITY_INPUTS

    if reference is None:
        return {"checked": False, "reason": "no FP32 reference was given for this QDQ model"}
    tol = backend.parity[artifact.precision]
    inputs, source = fixed_inputs(artifact, calib, PARITY_INPUTS)
    refs = _reference_outputs(Path(reference), inputs)
    gots = backend.infer_checks(artifact, inputs)
    outputs, raw_error = [], None
    for index, name in enumerate(_output_names(artifact, len(refs[0]))):
        pairs = [(r[index], g[index] if index < len(g) else None) for r, g in zip(refs, gots, strict=True)]
        row = {"name": name, "shape": list(pairs[0][0].shape)}
        try:
            row.update(_checked(backend, artifact, name, pairs, tol))
        except BuildError as exc:
            if tol.raw_checked or "has shape" in exc.message or raw_error is not None:
                raise
            raw_error = exc  # an INT8 detector is judged by its detections first (below)
            row["raw_error"] = exc.message
        outputs.append(row)
    record: dict[str, Any] = {
        "checked": True,
        "on": where_checked(backend),
        "inputs": f"{len(inputs)} ({source})",
        "tolerance": tol.as_dict(),
        "outputs": outputs,
    }
    head = artifact.meta["output"].get("head")
    if head in DECODABLE_HEADS and refs[0][0].ndim == 3:
        record["detections"] = _judged(backend, artifact, refs, gots, head, tol, raw_error)
    elif raw_error is not None:
        raise raw_error
    return record


def _judged(backend: Any, artifact: Any, refs: list, gots: list, head: str, tol: Any, raw_error: Any) -> dict:
    """The detections decide; with no detection on the check images, the raw outputs decide."""
    figures = _check_detections(backend, artifact, refs, gots, head, tol)
    if not figures["detections"] and raw_error is not None:
        raise raw_error
    return figures


#: Heads whose outputs edgekit decodes into detections (the check then judges by detections).
DECODABLE_HEADS = ("yolov5", "yolov8", "yolox")


def _check_detections(backend: Any, artifact: Any, refs: list, gots: list, head: str, tol: Any) -> dict:
    """Judge the main output by its detections; raise BuildError when FP32's are not kept."""
    from edgekit.backends.contract.agreement import agreement

    figures = agreement([r[0] for r in refs], [np.asarray(g[0]) for g in gots], head)
    where = f"{backend.name} {artifact.precision} output '{artifact.meta['output']['name']}'"
    hint = _HINTS.get(artifact.precision, "")
    kept, error = figures["kept"], figures["score_error"]
    if figures["detections"]:
        if kept < tol.min_kept:
            raise BuildError(
                f"{where} diverges from FP32 in its detections: {kept:.1%} of FP32's "
                f"{figures['detections']} detections kept "
                f"(limit {tol.min_kept:.0%}; same class, IoU >= 0.5)",
                hint,
            )
        if error is not None and error > tol.max_score_error:
            raise BuildError(
                f"{where} diverges from FP32 in its detections: mean score error {error:.3f} over "
                f"{figures['detections']} detections (limit {tol.max_score_error})",
                hint,
            )
        return figures
    figures["note"] = (
        "FP32 makes no detection on the check images; judged by the scores of its active anchors"
    )
    cosine = figures["active_scores_cosine"]
    if cosine is not None and (not np.isfinite(cosine) or cosine < tol.min_part_cosine):
        raise BuildError(
            f"{where} diverges from FP32: scores cosine {cosine:.5f} < {tol.min_part_cosine} over the "
            f"{figures['active_anchors']} anchors FP32 scores >= 0.05 (no detection on the check images)",
            hint,
        )
    return figures


def _output_names(artifact: Any, count: int) -> list[str]:
    first = artifact.meta["output"]["name"]
    return [first] + [f"output{i}" for i in range(1, count)]


def _checked(backend: Any, artifact: Any, name: str, pairs: list, tol: Any) -> dict[str, float]:
    where = f"{backend.name} {artifact.precision} output '{name}'"
    hint = _HINTS.get(artifact.precision, "")
    for ref, got in pairs:
        if got is None or tuple(np.shape(got)) != tuple(ref.shape):
            shape = None if got is None else list(np.shape(got))
            raise BuildError(f"{where} has shape {shape}, the FP32 model gives {list(ref.shape)}", hint)
    head = artifact.meta["output"].get("head") if name == artifact.meta["output"]["name"] else None
    worst = _worst([compare(ref, np.asarray(got), head) for ref, got in pairs])
    limits = {
        "cosine": tol.min_cosine,
        "boxes_cosine": tol.min_part_cosine,
        "scores_cosine": tol.min_part_cosine,
    }
    for key, limit in limits.items():
        if key in worst and (not np.isfinite(worst[key]) or worst[key] < limit):
            what = "cosine" if key == "cosine" else f"{key.split('_')[0]} cosine"
            raise BuildError(f"{where} diverges from FP32: {what} {worst[key]:.5f} < {limit}", hint)
    if worst["rel_error"] > tol.max_rel_error:
        raise BuildError(
            f"{where} diverges from FP32: max error {worst['max_abs']:.4g} is "
            f"{worst['rel_error']:.3g} of the output's range (limit {tol.max_rel_error})",
            hint,
        )
    return {k: round(v, 6) for k, v in worst.items()}
