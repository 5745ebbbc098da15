"""``edgekit build``: one artifact, judged by its detections against FP32, outside a deploy run."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from edgekit.core.errors import ConfigError

#: ``edgekit build --calibrator auto``: percentage points of FP32's detections the chosen method may lose.
DEFAULT_MAX_DROP = 5.0


def build_artifact(
    backend: str,
    precision: str,
    onnx_path: Path,
    out: Path,
    *,
    calib: str | None = None,
    calib_root: Path = Path("calibration"),
    method: str = "default",
    head: str | None = None,
    threads: int | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
    preprocess: dict | None = None,
    check_on: str | None = None,
):
    """Build one artifact. INT8 from an FP32 ONNX follows the backend's declared ``int8_source``.

    A QDQ backend (``int8_source = "qdq"``) gets a QDQ model quantized here from ``calib`` for this host's
    CPU; a self-quantizing backend runs its own quantizer on the FP32 model with ``calib``.
    The set's images go through the model's own preprocessing, whatever size they were imported at.

    Every build is judged by its detections against FP32 on the check images (the calibration
    images). ``method="default"`` tries the backend's calibration methods in order and keeps the first
    whose detections pass (a self-quantizing backend tries each method with its declared fallbacks, more
    of the head in float, before the next method); ``"auto"`` builds every method and keeps the one that
    keeps the most of FP32's detections (then the lowest score error), refusing when it loses more than
    ``max_drop`` percentage points of them; a named method is built alone.

    ``check_on`` (a board simulator, ``rpi4`` or ``rk3588``) runs the checks of a backend that can
    (``checks_on_board``) on that board's kernels instead of this host's.

    Example:
        >>> backend = load_target("local").backend  # doctest: +SKIP
        >>> build_artifact(backend, "fp32", Path("m.onnx"), Path("build/m"))  # doctest: +SKIP
    """
    from edgekit.backends.contract.board_check import checks_on

    board = None
    if check_on:
        from edgekit.device.sim.target import board_check

        board = board_check(check_on)
    with checks_on(board):
        return _build_artifact(
            backend, precision, onnx_path, out, calib=calib, calib_root=calib_root, method=method, head=head,
            threads=threads, max_drop=max_drop, preprocess=preprocess,
        )  # fmt: skip


def _build_artifact(
    backend: str,
    precision: str,
    onnx_path: Path,
    out: Path,
    *,
    calib: str | None,
    calib_root: Path,
    method: str,
    head: str | None,
    threads: int | None,
    max_drop: float,
    preprocess: dict | None,
):
    from edgekit.backends.contract.parity import is_qdq
    from edgekit.calib import CalibrationSet
    from edgekit.core.registry import BACKENDS
    from edgekit.models.user import inspect_onnx, static_copy

    be = BACKENDS.get(backend)()
    det = inspect_onnx(onnx_path, head=head)
    if preprocess:
        spec = type(det.preprocess).model_validate({**det.preprocess.model_dump(), **preprocess})
        det = dataclasses.replace(det, preprocess=spec)
    cs = CalibrationSet.load(calib, root=calib_root).verify() if calib else None
    with tempfile.TemporaryDirectory(prefix="edgekit-build-") as tmp:
        source = Path(onnx_path)
        if not det.static:  # runners feed one fixed shape; fix the file's dynamic dims to it
            source = static_copy(det, Path(tmp) / "model_static.onnx")
        if precision == "int8":
            from edgekit.backends.contract.onnx_io import load_onnx

            if is_qdq(load_onnx(source)):
                _check_prequantized(be, onnx_path)
                options = det.build_options(precision=precision, threads=threads)
                return be.build(source, options, out, calib=cs, reference=None)
            from edgekit.stages.search import MethodSearch

            plan = _int8_plan(be, method, cs, onnx_path, max_drop)
            search = MethodSearch(be, det, source, cs, Path(tmp), threads, max_drop)
            return search.run(plan, out)
        options = det.build_options(precision=precision, threads=threads)
        return be.build(source, options, out, calib=cs, reference=source)


def _int8_plan(be, method: str, cs, onnx_path: Path, max_drop: float):
    """The INT8 decision of ``edgekit build`` (:func:`edgekit.backends.contract.int8_plan.decide_int8`)."""
    from edgekit.backends.contract.int8_plan import decide_int8

    if cs is None:
        raise ConfigError(
            f"{onnx_path} is an FP32 model and int8 was asked without a calibration set",
            "give --calib NAME (see `edgekit calib list`)"
            + (" or a QDQ ONNX" if be.int8_source == "qdq" else ""),
        )
    return decide_int8(type(be), method, max_drop=max_drop, deploy=False)


def _check_prequantized(be, onnx_path: Path) -> None:
    if be.int8_source != "qdq":
        raise ConfigError(
            f"{onnx_path} is already quantized (QDQ), but backend {be.name} quantizes the FP32 model itself",
            "give the FP32 ONNX and --calib NAME",
        )
