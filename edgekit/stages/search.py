"""The INT8 calibration search ``edgekit build`` and a deploy's INT8 stages share.

Each calibration method of the backend in turn, then the layers ranked most sensitive kept in float (a QDQ
backend) or the backend's declared fallback settings (a self-quantizing one), until a build keeps FP32's
detections on the check images; ``best`` builds every method and keeps the best. What was tried is listed.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any


class MethodSearch:
    """Build an INT8 artifact with each calibration method in turn; keep what the detection check passes."""

    def __init__(
        self, be, det, source: Path, cs, tmp: Path, threads, max_drop: float, form=None,
        float_route: str = "build fp16/fp32 (--precision)",
    ) -> None:  # fmt: skip
        """``float_route``: how the command running the search goes without INT8, in its own options."""
        self.be, self.det, self.source, self.cs, self.tmp = be, det, source, cs, tmp
        self.threads, self.max_drop = threads, max_drop
        self._form = form  # a QDQ backend's form: a deploy passes its device's (see :attr:`form`)
        self.float_route = float_route
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
                f"calibrate on more (and more varied) images with --calib, or {self.float_route}",
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
                f"raise --max-drop, calibrate on more images (--calib), or {self.float_route}",
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
            self.source, functools.partial(self.cs.arrays, spec=self.det.preprocess), method,
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


def _quantize(be, src: Path, dst: Path, cs, method: str, det, extra_float: list[str] | None, form):
    from edgekit.backends.contract.onnx_io import load_onnx
    from edgekit.quantize import graph as qgraph

    keep: str | list[str] = "auto"
    if extra_float:
        keep = qgraph.keep_float_auto(qgraph.ensure_node_names(load_onnx(src))) + list(extra_float)
    result = form.quantizer(
        src,
        dst,
        functools.partial(cs.arrays, spec=det.preprocess),
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
