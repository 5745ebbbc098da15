"""The deploy's INT8 stage: calibration set (made once, verified every time) + PTQ, auto or QAT."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from edgekit.fsutil import sha256_file
from edgekit.stages import RunContext, add_node, eval_tensors, stage


def ensure_calibration_set(ctx: RunContext, req, root: Path):
    """Load ``--calib`` (verified, spec-checked), or make the default set from the dataset's calib split."""
    from edgekit.calib import CalibrationSet, import_set

    if req.calib:
        cs = CalibrationSet.load(req.calib, root=ctx.calib_root)
    else:
        name = "shapes-hard" if not req.data else f"{Path(req.data).name}-calib"
        has_calib = (Path(root) / "images" / "calib").is_dir()
        try:
            cs = CalibrationSet.load(name, root=ctx.calib_root)
            stale = cs.spec != ctx.spec
        except Exception:  # noqa: BLE001 - a missing set is simply made below
            cs, stale = None, True
        if stale:
            split, count = ("calib", None) if has_calib else ("train", 128)
            cs = import_set(
                root,
                name,
                root=ctx.calib_root,
                from_dataset=True,
                split=split,
                count=count,
                strategy="stratified",
                spec=ctx.spec,
                progress=ctx.progress,
            ).set
    cs.verify()
    cs.check_spec(ctx.spec)
    return cs


def _device_evaluator(ctx: RunContext, plan, val, workdir: Path):
    """Build each candidate for the target and compute mAP from the device's own outputs."""
    from edgekit.backends.base import BuildOptions
    from edgekit.device.agent import Agent
    from edgekit.models.train import map_from_candidates

    inputs = eval_tensors(val)
    counter = {"n": 0}

    def evaluate(qdq_path: Path) -> dict[str, Any]:
        counter["n"] += 1
        out = workdir / f"candidate-{counter['n']}"
        options = BuildOptions(
            precision="int8",
            threads=ctx.target.runtime.threads,
            preprocess=ctx.spec,
            head=ctx.state.get("head", "yolov5"),
            num_classes=len(ctx.state["class_names"]),
        )
        plan.backend_cls().build(qdq_path, options, out)
        result = Agent(plan.transport_factory()).bench(
            out,
            bench_input=inputs[:1],
            eval_inputs=inputs,
            warmup=5,
            min_warmup_s=0.0,
            iterations=50,
            min_seconds=0.0,
            threads=ctx.target.runtime.threads,
            progress=False,
        )
        return {**map_from_candidates(val, result.detections), "latency_ms_p50": result.stats["p50"]}

    return evaluate


def run_quantize(ctx: RunContext, req, plan, model, onnx_path: Path, root: Path, val) -> Path:
    """Quantize ``onnx_path`` to INT8 QDQ; add the ``quantize`` node; return the QDQ model path."""
    from edgekit.quantize import quantize_int8

    quant = plan.recipe.quantize_step()
    out = ctx.run_dir / "model_int8.onnx"
    if quant is not None and quant.type == "qat":
        return _qat_export(ctx, model, out)
    method = req.calibrator or getattr(quant, "method", "minmax")
    keep = getattr(quant, "keep_float", "auto")
    form = device_qdq_form(ctx, plan)
    with stage(ctx, "quantize") as fields:
        cs = ensure_calibration_set(ctx, req, root)
        ctx.record.calibration = cs.ref()
        arrays = lambda: cs.arrays()  # noqa: E731 - a fresh iterator per calibration pass
        extra: dict[str, Any] = {}
        if method == "auto":
            max_drop = req.max_drop if req.max_drop is not None else getattr(quant, "max_drop", 1.0)
            result, extra = _auto(ctx, plan, onnx_path, arrays, max_drop, val, out, form)
        else:
            result = quantize_int8(
                onnx_path,
                out,
                arrays,
                method=method,
                reduce_range=form.reduce_range,
                keep_float=keep,
                progress=ctx.progress,
            )
    weights = _weights_label(result.reduce_range, form)
    qinfo = {
        "calibrator": result.method,
        "per_channel": result.per_channel,
        "weight_bits": result.weight_bits,
        "reduce_range": result.reduce_range,
        "weight_range_reason": weights,
        "int8_dot": form.int8_dot,
        "cpu_source": form.cpu_source,
        "keep_float": result.excluded_nodes,
        "scales_sha256": result.scales_sha256,
        "calibration": cs.ref(),
        "quantized_nodes": result.quantized_nodes,
    }
    ctx.state["quantization"] = qinfo
    add_node(
        ctx,
        "quantize",
        {"method": method, "keep_float": keep, "calibration": cs.ref(), "qdq_form": form.to_dict()},
        fields,
        label=f"INT8 PTQ ({result.method}, QDQ, per-channel {weights}; "
        f"{_float_label(result.excluded_nodes)})",
        metrics={**ctx.state["deployed_stats"], "size_bytes": int(result.size_bytes)},
        inputs={"calibration": cs.sha256},
        outputs={out.name: sha256_file(out)},
        extra={**qinfo, **extra},
        tools={"onnxruntime": _ort_version()},
    )
    return out


def device_qdq_form(ctx: RunContext, plan):
    """The QDQ form the target's backend needs on the target's CPU (ONNX Runtime: the weight range)."""
    from edgekit.config import device_cpu

    cpu, source = device_cpu(ctx.target)
    return plan.backend_cls().qdq_form(cpu, source)


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


def _auto(ctx: RunContext, plan, onnx_path: Path, arrays, max_drop: float, val, out: Path, form):
    import shutil

    from edgekit.quantize.auto import auto_calibrate

    base = ctx.record.node("reference").metric("map50_95")
    with tempfile.TemporaryDirectory(prefix="edgekit-auto-") as tmp:
        res = auto_calibrate(
            onnx_path,
            arrays,
            _device_evaluator(ctx, plan, val, Path(tmp)),
            max_drop=max_drop,
            baseline_map50_95=base,
            weight_ranges=form.auto_weight_ranges(),
            workdir=Path(tmp),
            progress=ctx.progress,
        )
        shutil.copyfile(res.chosen["path"], out)  # ships byte for byte what was measured
    chosen = res.chosen
    candidates = [
        {k: v for k, v in c.items() if k != "path"} | {"chosen": c is chosen} for c in res.candidates
    ]
    result = dataclasses.replace(res.chosen_result, path=out)
    return result, {"candidates": candidates, "auto_passed": res.passed, "warnings": res.warnings}


def _qat_export(ctx: RunContext, model, out: Path) -> Path:
    from edgekit.compress.qat import export_qdq

    with stage(ctx, "quantize") as fields:
        export_qdq(model, ctx.spec.input_shape(), out)
    ctx.state["quantization"] = {"calibrator": "qat", "per_channel": True}
    add_node(
        ctx,
        "quantize",
        {"method": "qat"},
        fields,
        label="INT8 from QAT (QDQ export of the fake-quant model)",
        metrics={**ctx.state["deployed_stats"], "size_bytes": out.stat().st_size},
        outputs={out.name: sha256_file(out)},
        extra=ctx.state["quantization"],
    )
    return out
