"""The deploy's INT8 stage for backends whose INT8 is a QDQ ONNX (``int8_source = "qdq"``).

PTQ with ``edgekit.quantize`` in the form the backend asks for on the target's CPU (ONNX Runtime:
7-bit weights on x86 without VNNI), ``--calibrator auto`` (every candidate built and measured on the
target), or the QDQ export of a QAT model. Self-quantizing backends skip this stage: their
quantizer runs in the build stage (:mod:`edgekit.stages.build`).
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.backends.contract.int8_plan import Int8Plan
from edgekit.core.files import sha256_file
from edgekit.stages.candidates import measure
from edgekit.stages.context import ModelFacts, Quantized, RunContext, add_node, fp32_map50_95, stage

#: How a deploy goes without INT8, in ``edgekit deploy``'s own options (the search's hints name it).
FLOAT_ROUTE = "deploy to an fp16 or fp32 target (--target)"

if TYPE_CHECKING:
    from edgekit.backends.contract.base import Backend
    from edgekit.calib.calibration_set import CalibrationSet
    from edgekit.device.transport import DeviceSession
    from edgekit.models.train import InMemorySplit
    from edgekit.quantize.form import QdqForm


def device_qdq_form(ctx: RunContext, backend: Backend) -> QdqForm:
    """The QDQ form the target's backend needs on the target's CPU (ONNX Runtime: the weight range)."""
    from edgekit.core.config import device_cpu

    cpu, source = device_cpu(ctx.target)
    return backend.qdq_form(cpu, source)


def quantize_stage(
    ctx: RunContext,
    backend: Backend,
    device: DeviceSession,
    int8: Int8Plan,
    onnx_path: Path,
    cs: CalibrationSet,
    val: InMemorySplit,
    facts: ModelFacts,
) -> Quantized:
    """Quantize ``onnx_path`` to INT8 QDQ from ``cs``; add the ``quantize`` node; return the QDQ model.

    ``device``: the run's session to the board (``--calibrator auto`` measures its candidates there).
    """
    out = ctx.run_dir / "model_int8.onnx"
    form = device_qdq_form(ctx, backend)
    method = int8.method
    with stage(ctx, "quantize") as fields:
        arrays = functools.partial(cs.arrays, spec=ctx.spec)  # a fresh iterator per calibration pass
        extra: dict[str, Any] = {}
        if method == "auto":
            result, extra = _auto(
                ctx, (backend, device), onnx_path, (arrays, cs), int8.max_drop, (val, facts), out, form
            )
        elif int8.search == "first_passing":
            result, extra = _first_passing(ctx, backend, int8, onnx_path, cs, facts, form, out)
        else:
            result = form.quantizer(
                onnx_path,
                out,
                arrays,
                method=method,
                reduce_range=form.reduce_range,
                keep_float=int8.keep_float,
                progress=ctx.progress,
            )
    weights = _weights_label(result.reduce_range, form)
    quantizer = backend.quantizer_options(
        method=result.method,
        per_channel=result.per_channel,
        weight_bits=result.weight_bits,
        weight_range_reason=weights,
        keep_float=result.excluded_nodes,
        scales_sha256=result.scales_sha256,
        quantized_nodes=result.quantized_nodes,
    )
    info = {**quantizer.model_dump(), "int8_dot": form.int8_dot, "cpu_source": form.cpu_source}
    add_node(
        ctx,
        "quantize",
        {
            "method": "default" if int8.search == "first_passing" else method,
            "keep_float": int8.keep_float,
            "calibration": cs.ref(),
            "qdq_form": form.to_dict(),
        },
        fields,
        label=f"INT8 PTQ ({result.method}, {form.label}, per-channel {weights}; "
        f"{_float_label(result.excluded_nodes)})",
        metrics={**facts.stats, "size_bytes": int(result.size_bytes)},
        inputs={"calibration": cs.sha256},
        outputs={out.name: sha256_file(out)},
        extra={**info, "calibration": cs.ref(), "spec": ctx.spec.model_dump(mode="json"), **extra},
        tools={"onnxruntime": _ort_version()},
    )
    return Quantized(out, quantizer)


def _weights_label(reduce_range: bool, form) -> str:
    """The form's reason, or what ``auto`` chose against it (it measured both on the device)."""
    if reduce_range == form.reduce_range:
        return form.reason
    bits = 7 if reduce_range else 8
    return f"{bits}-bit weights: measured best on the device by --calibrator auto ({form.int8_dot})"


def _float_label(excluded: list[str]) -> str:
    convs = sum("conv" in name.lower() for name in excluded)
    if not excluded:
        return "every quantizable layer in INT8"
    return f"{convs} conv(s) + {len(excluded) - convs} decode-tail node(s) kept in float"


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _first_passing(
    ctx: RunContext,
    backend: Backend,
    int8: Int8Plan,
    onnx_path: Path,
    cs: CalibrationSet,
    facts: ModelFacts,
    form: QdqForm,
    out: Path,
):
    """The default for a QDQ backend: ``edgekit build``'s search, in the device's form.

    Its methods in order, then the layers ranked most sensitive kept in float, until a QDQ model keeps
    FP32's detections on the check images; the first that passes ships, and the record lists what was tried.
    """
    from edgekit.models.user import inspect_onnx
    from edgekit.stages.search import MethodSearch

    det = dataclasses.replace(inspect_onnx(onnx_path, head=facts.head), preprocess=ctx.spec)
    with tempfile.TemporaryDirectory(prefix="edgekit-search-") as tmp:
        search = MethodSearch(
            backend, det, onnx_path, cs, Path(tmp), ctx.target.runtime.threads, 0.0, form,
            float_route=FLOAT_ROUTE,
        )  # fmt: skip
        written = search.written[search.choose(int8)]
        shutil.copyfile(written.path, out)  # ships byte for byte what the check passed
    result = dataclasses.replace(written, path=out)
    return result, {"calibration_search": search.tried}


def _auto(
    ctx: RunContext,
    on: tuple[Backend, DeviceSession],
    onnx_path: Path,
    calib: tuple,
    max_drop: float,
    eval_on: tuple[InMemorySplit, ModelFacts],
    out: Path,
    form: QdqForm,
):
    """``--calibrator auto`` for a QDQ backend: every candidate built and scored on the target.

    ``on``: the backend and the run's device session; ``calib``: (fresh-iterator factory of the set's
    arrays, the set itself for the builds' check); ``eval_on``: (the val split the candidates are scored
    on, the model's facts).
    """
    from edgekit.quantize.auto import auto_calibrate

    arrays, cs = calib
    val, facts = eval_on

    base = fp32_map50_95(ctx)
    with tempfile.TemporaryDirectory(prefix="edgekit-auto-") as tmp:
        res = auto_calibrate(
            onnx_path,
            arrays,
            _qdq_evaluator(ctx, on, (val, facts), cs, Path(tmp), onnx_path),
            max_drop=max_drop,
            baseline_map50_95=base,
            weight_ranges=form.auto_weight_ranges(),
            quantizer=form.quantizer,
            workdir=Path(tmp),
            progress=ctx.progress,
        )
        shutil.copyfile(res.chosen["path"], out)  # ships byte for byte what was measured
    chosen = res.chosen
    candidates = [
        {k: v for k, v in c.items() if k != "path"} | {"chosen": c is chosen} for c in res.candidates
    ]
    result = dataclasses.replace(res.chosen_result, path=out)
    extra = {"candidates": candidates, "auto_passed": res.passed, "fp32_map50_95": base}
    return result, extra | {"warnings": res.warnings}


def _qdq_evaluator(
    ctx: RunContext,
    on: tuple[Backend, DeviceSession],
    eval_on: tuple[InMemorySplit, ModelFacts],
    cs: CalibrationSet,
    workdir: Path,
    fp32: Path,
):
    """Build each QDQ candidate for the target and score it from the device's own outputs.

    Each build runs the FP32 check on the calibration images, as the shipped artifact's build does: on
    the seeded noise a build without a set falls back to, INT8 activations leave their calibrated
    ranges and a model that holds on images can read 0.92 instead of 0.95 (measured: microyolo-long).
    """
    from edgekit.backends.contract.base import BuildOptions

    backend, device = on
    val, facts = eval_on
    counter = {"n": 0}

    def evaluate(qdq_path: Path) -> dict[str, Any]:
        counter["n"] += 1
        out = workdir / f"candidate-{counter['n']}"
        options = BuildOptions(
            precision="int8",
            threads=ctx.target.runtime.threads,
            preprocess=ctx.spec,
            head=facts.head,
            num_classes=len(facts.class_names),
        )
        if backend.build_location == "device":
            from edgekit.stages.build import build_on_device

            staged = workdir / f"staged-{counter['n']}"
            backend.build(qdq_path, options, staged, calib=cs, reference=fp32)
            artifact = build_on_device(ctx, device, staged, out)
        else:
            artifact = backend.build(qdq_path, options, out, calib=cs, reference=fp32)
        checked_on = (artifact.meta.get("parity") or {}).get("inputs")
        return measure(ctx, device, out, val) | {"checked_on": checked_on}

    return evaluate


def qat_stage(ctx: RunContext, backend: Backend, model: Any, facts: ModelFacts) -> Quantized:
    """INT8 from a QAT model: its QDQ export (no calibration pass)."""
    from edgekit.compress.qat import export_qdq

    out = ctx.run_dir / "model_int8.onnx"
    with stage(ctx, "quantize") as fields:
        export_qdq(model, ctx.spec.input_shape(), out)
    quantizer = backend.quantizer_options(method="qat", per_channel=True)
    add_node(
        ctx,
        "quantize",
        {"method": "qat"},
        fields,
        label="INT8 from QAT (QDQ export of the fake-quant model)",
        metrics={**facts.stats, "size_bytes": out.stat().st_size},
        outputs={out.name: sha256_file(out)},
        extra=quantizer.model_dump(),
    )
    return Quantized(out, quantizer)
