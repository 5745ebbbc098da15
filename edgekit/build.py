"""``edgekit build`` and ``edgekit bench``: one artifact, one measurement, outside a deploy run."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

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

    A QDQ backend (ONNX Runtime) gets a QDQ model quantized here from ``calib`` for this host's CPU;
    a self-quantizing backend (MNN, ncnn) runs its own quantizer on the FP32 model with ``calib``.
    The set's images go through the model's own preprocessing, whatever size they were imported at.

    Every build is judged by its detections against FP32 on the check images (the calibration
    images). ``method="default"`` tries the backend's calibration methods in order and keeps the first
    whose detections pass (a self-quantizing backend tries each method with its declared fallbacks, more
    of the head in float, before the next method); ``"auto"`` builds every method and keeps the one that
    keeps the most of FP32's detections (then the lowest score error), refusing when it loses more than
    ``max_drop`` percentage points of them; a named method is built alone.

    ``check_on`` (a board simulator, ``rpi4`` or ``rk3588``) runs the checks of a backend that can
    (``checks_on_board``: MNN) on that board's kernels instead of this host's.

    Example:
        >>> build_artifact("onnxruntime", "fp32", Path("m.onnx"), Path("build/m"))  # doctest: +SKIP
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
            plan = _int8_plan(be, method, cs, onnx_path, max_drop)
            search = MethodSearch(be, det, source, cs, Path(tmp), threads, max_drop)
            return search.run(plan, out)
        options = det.build_options(precision=precision, threads=threads)
        return be.build(source, options, out, calib=cs, reference=source)


class MethodSearch:
    """Build an INT8 artifact with each calibration method in turn; keep what the detection check passes."""

    def __init__(self, be, det, source: Path, cs, tmp: Path, threads, max_drop: float, form=None) -> None:
        self.be, self.det, self.source, self.cs, self.tmp = be, det, source, cs, tmp
        self.threads, self.max_drop = threads, max_drop
        self._form = form  # a QDQ backend's form: a deploy passes its device's (see :attr:`form`)
        self.fallback: tuple = ()  # the plan's (run)
        self.tried: list[dict] = []
        self.written: dict[Path, Any] = {}  # candidate folder -> its QDQ writer's result (QDQ backends)

    @property
    def form(self):
        """The QDQ form candidates are written in: the deploy's device's, else this host's CPU's."""
        if self._form is None:
            from edgekit.runners.runcore import cpu_features

            self._form = self.be.qdq_form(cpu_features(), "this host (edgekit build)")
        return self._form

    def run(self, plan, out: Path):
        """Build the plan's methods in order; the first to pass (a ``best`` search: the best) lands at out."""
        return self._land(self.choose(plan), out)

    def choose(self, plan) -> Path:
        """Build the plan's methods in order; the folder of the first to pass (``best``: of the best)."""
        from edgekit.core.errors import BuildError, CalibrationError

        methods, pick_best, self.fallback = list(plan.methods), plan.search == "best", plan.fallback

        built: list[tuple[dict, Path]] = []
        small: list[CalibrationError] = []
        own = self.be.int8_source != "qdq"
        for method in methods:
            folder = self.tmp / f"candidate-{method}"
            try:
                artifact = self._build(method, folder)
            except (BuildError, CalibrationError) as exc:
                self.tried.append({"method": method, "error": exc.message})
                small += [exc] if isinstance(exc, CalibrationError) else []
                if len(methods) == 1:
                    raise
                if own and not pick_best and isinstance(exc, BuildError):  # this method, more head float
                    built = self._option_fallback([method])
                    if built:
                        break
                continue
            figures = artifact.meta["parity"].get("detections") or {}
            self.tried.append({"method": method, **{k: figures.get(k) for k in ("kept", "score_error")}})
            built.append((self.tried[-1], folder))
            if not pick_best:
                break
        if len(small) == len(methods):  # the set is too small for every method: say so, once
            raise CalibrationError(
                f"calibration set {self.cs.name!r} ({self.cs.count} images) is too small for every method of "
                f"{self.be.name}: " + "; ".join(f"{t['method']}: {t['error']}" for t in self.tried),
                "import a larger set with `edgekit calib import` and give it with --calib",
            )
        if not built and not own:
            built = self._float_fallback(methods[0])
        elif not built and pick_best:
            built = self._option_fallback(methods)
        if not built:
            raise BuildError(
                f"no calibration method of {self.be.name} keeps FP32's detections: "
                + "; ".join(f"{t['method']}: {t['error']}" for t in self.tried),
                "calibrate on more (and more varied) images with --calib, or build fp16/fp32 (--precision)",
            )
        chosen, folder = self._best(built)
        if pick_best and self._too_lossy(chosen):  # every method loses too much: the fallbacks too
            good = lambda entry: not self._too_lossy(entry)  # noqa: E731
            built += (
                self._float_fallback(methods[0], good)
                if self.be.int8_source == "qdq"
                else self._option_fallback(methods, good)
            )
            chosen, folder = self._best(built)
        kept = chosen.get("kept")
        if pick_best and self._too_lossy(chosen):
            raise BuildError(
                f"the best calibration method of {self.be.name} ({chosen['method']}) keeps {kept:.1%} of "
                f"FP32's detections, more than --max-drop {self.max_drop:g} points lost",
                "raise --max-drop, calibrate on more images (--calib), or build fp16/fp32 (--precision)",
            )
        return folder

    @staticmethod
    def _best(built: list[tuple[dict, Path]]) -> tuple[dict, Path]:
        """The candidate keeping the most of FP32's detections, then the lowest score error."""
        return max(built, key=lambda b: (b[0].get("kept") or 0.0, -(b[0].get("score_error") or 0.0)))

    def _too_lossy(self, entry: dict) -> bool:
        kept = entry.get("kept")
        return kept is not None and (1.0 - kept) * 100.0 > self.max_drop

    def _float_fallback(self, method: str, good=lambda entry: True) -> list[tuple[dict, Path]]:
        """Keep the layers that move the detections most in float, 1, 2, 4, 8, 16 then 32, until one passes.

        Layers are ranked by :func:`edgekit.quantize.sensitivity.layer_sensitivity` with the detection
        metric (each layer alone in INT8, its effect on the active anchors' scores).
        """
        from edgekit.core.errors import BuildError
        from edgekit.quantize.sensitivity import detection_metric, layer_sensitivity

        ranking = self._ranking(method, layer_sensitivity, detection_metric)
        found: list[tuple[dict, Path]] = []
        for count in self.fallback:
            extra = [name for name, _ in ranking[:count]]
            if len(extra) < count and count > 1:
                break
            folder = self.tmp / f"candidate-{method}-float{count}"
            try:
                artifact = self._build(method, folder, extra)
            except BuildError as exc:
                self.tried.append({"method": method, "float_layers": extra, "error": exc.message})
                continue
            figures = artifact.meta["parity"].get("detections") or {}
            entry = {
                "method": method,
                "float_layers": extra,
                **{k: figures.get(k) for k in ("kept", "score_error")},
            }
            entry["why"] = "most sensitive layers by their effect on the detections' scores"
            self.tried.append(entry)
            if good(entry):
                return [(entry, folder)]
            found.append((entry, folder))
        return found

    def _option_fallback(self, methods: list[str], good=lambda entry: True) -> list[tuple[dict, Path]]:
        """The backend's declared :attr:`~edgekit.backends.contract.base.Backend.fallback` settings."""
        from edgekit.core.errors import BuildError

        found: list[tuple[dict, Path]] = []
        for index, update in enumerate(self.fallback):
            for method in methods:
                folder = self.tmp / f"candidate-{method}-fallback{index}"
                try:
                    artifact = self._build(method, folder, options=update)
                except BuildError as exc:
                    self.tried.append({"method": method, **update, "error": exc.message})
                    continue
                figures = artifact.meta["parity"].get("detections") or {}
                entry = {"method": method, **update, **{k: figures.get(k) for k in ("kept", "score_error")}}
                self.tried.append(entry)
                if good(entry):
                    return [(entry, folder)]
                found.append((entry, folder))
        return found

    def _ranking(self, method, layer_sensitivity, detection_metric) -> list[tuple[str, float]]:
        from edgekit.backends.contract.onnx_io import load_onnx
        from edgekit.quantize import graph as qgraph

        model = qgraph.ensure_node_names(load_onnx(self.source))
        head = set(qgraph.keep_float_auto(model))
        candidates = [n for n in qgraph.quantizable_nodes(model, ("Conv",)) if n not in head]
        form = self.form
        return layer_sensitivity(
            self.source, lambda: self.cs.arrays(spec=self.det.preprocess), method,
            metric=detection_metric(self.det.head), candidates=candidates, num_images=8,
            reduce_range=form.reduce_range, writer=form.layer_writer,
        )  # fmt: skip

    def _build(self, method: str, folder: Path, extra_float: list[str] | None = None, options=None):
        be, det = self.be, self.det
        source, quantizer = self.source, None
        if be.int8_source == "qdq":
            dst = self.tmp / f"int8-{method}-{len(extra_float or [])}.onnx"
            source, quantizer, self.written[folder] = _quantize(
                be, self.source, dst, self.cs, method, det, extra_float, self.form
            )
        else:
            quantizer = be.quantizer_options(method=method, **(options or {}))
        build_options = det.build_options(precision="int8", threads=self.threads, quantizer=quantizer)
        return be.build(source, build_options, folder, calib=self.cs, reference=self.source)

    def _land(self, folder: Path, out: Path):
        """Record what was tried in the chosen artifact's sidecar and move it to ``out``."""
        import json
        import os

        from edgekit.backends.contract.base import ARTIFACT_JSON, Artifact
        from edgekit.core.files import atomic_write_json

        meta = json.loads((folder / ARTIFACT_JSON).read_text())
        meta["calibration_search"] = self.tried
        atomic_write_json(folder / ARTIFACT_JSON, meta)
        if out.exists():
            from edgekit.core.errors import ConfigError

            raise ConfigError(f"{out} already exists", "give a new --out folder, or remove it")
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder, out) if _same_fs(folder, out.parent) else _copy_tree(folder, out)
        return Artifact.load(out)


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy to a temp sibling of ``dst``, then rename (no half-written artifact at ``dst``)."""
    import shutil

    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    tmp.replace(dst)


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


def _quantize(be, src: Path, dst: Path, cs, method: str, det, extra_float: list[str] | None, form):
    from edgekit.backends.contract.onnx_io import load_onnx
    from edgekit.quantize import graph as qgraph

    keep: str | list[str] = "auto"
    if extra_float:
        keep = qgraph.keep_float_auto(qgraph.ensure_node_names(load_onnx(src))) + list(extra_float)
    result = form.quantizer(
        src,
        dst,
        lambda: cs.arrays(spec=det.preprocess),
        method=method,
        reduce_range=form.reduce_range,
        keep_float=keep,
    )
    quantizer = be.quantizer_options(
        method=method,
        weight_bits=result.weight_bits,
        weight_range_reason=form.reason,
        keep_float=result.excluded_nodes,
        scales_sha256=result.scales_sha256,
        quantized_nodes=result.quantized_nodes,
    )
    return dst, quantizer, result
