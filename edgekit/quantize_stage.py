"""The deploy's INT8 stage: calibration set (made once, verified every time) + PTQ, auto or QAT."""

from __future__ import annotations

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
    with stage(ctx, "quantize") as fields:
        cs = ensure_calibration_set(ctx, req, root)
        ctx.record.calibration = cs.ref()
        arrays = lambda: cs.arrays()  # noqa: E731 - a fresh iterator per calibration pass
        extra: dict[str, Any] = {}
        if method == "auto":
            max_drop = req.max_drop if req.max_drop is not None else getattr(quant, "max_drop", 1.0)
            result, extra = _auto(ctx, plan, onnx_path, arrays, max_drop, val, out)
        else:
            result = quantize_int8(
                onnx_path, out, arrays, method=method, keep_float=keep, progress=ctx.progress
            )
    qinfo = {
        "calibrator": result.method,
        "per_channel": result.per_channel,
        "keep_float": result.excluded_nodes,
        "scales_sha256": result.scales_sha256,
        "calibration": cs.ref(),
        "quantized_nodes": result.quantized_nodes,
    }
    ctx.state["quantization"] = qinfo
    add_node(
        ctx,
        "quantize",
        {"method": method, "keep_float": keep, "calibration": cs.ref()},
        fields,
        label=f"INT8 PTQ ({result.method}, QDQ, per-channel weights; {_float_label(result.excluded_nodes)})",
        metrics={**ctx.state["deployed_stats"], "size_bytes": int(result.size_bytes)},
        inputs={"calibration": cs.sha256},
        outputs={out.name: sha256_file(out)},
        extra={**qinfo, **extra},
        tools={"onnxruntime": _ort_version()},
    )
    return out


def _float_label(excluded: list[str]) -> str:
    convs = sum("conv" in name.lower() for name in excluded)
    if not excluded:
        return "every quantizable layer in INT8"
    return f"{convs} conv(s) + {len(excluded) - convs} decode-tail node(s) kept in float"


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _auto(ctx: RunContext, plan, onnx_path: Path, arrays, max_drop: float, val, out: Path):
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
            workdir=Path(tmp),
            progress=ctx.progress,
        )
        shutil.copyfile(res.chosen["path"], out)
    chosen = res.chosen
    candidates = [
        {k: v for k, v in c.items() if k != "path"} | {"chosen": c is chosen} for c in res.candidates
    ]
    from edgekit.quantize import quantize_int8

    # Re-derive the QuantResult of the chosen variant (cheap) so the record carries its scales hash.
    result = quantize_int8(
        onnx_path, out, arrays, method=chosen["method"], keep_float=chosen["keep_float"], progress=False
    )
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
