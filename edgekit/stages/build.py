"""The build stage: the target backend's artifact, checked against FP32 before anything is measured.

For a self-quantizing backend (``int8_source = "calibration"``) at int8 this is where INT8 is made:
the backend's own quantizer runs on the FP32 ONNX with the calibration set, one method or, with
``--calibrator auto``, each of the backend's methods built and measured on the target; the artifact
that ships is the measured candidate's folder, copied as it is.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.backends.contract.artifact import DeviceBuild
from edgekit.backends.contract.base import Artifact, BuildOptions, QuantizerOptions
from edgekit.backends.contract.int8_plan import Int8Plan
from edgekit.core.errors import BuildError, CalibrationError
from edgekit.quantize.auto import choose
from edgekit.stages.candidates import measure
from edgekit.stages.context import Built, ModelFacts, RunContext, add_node, fp32_map50_95, stage

if TYPE_CHECKING:
    from edgekit.backends.contract.base import Backend
    from edgekit.calib.calibration_set import CalibrationSet
    from edgekit.device.transport import DeviceSession
    from edgekit.models.train import InMemorySplit


def _options(ctx: RunContext, facts: ModelFacts, quantizer: QuantizerOptions | None) -> BuildOptions:
    return BuildOptions(
        precision=ctx.target.precision,
        threads=ctx.target.runtime.threads,
        head=facts.head,
        class_names=list(facts.class_names),
        num_classes=len(facts.class_names),
        preprocess=ctx.spec,
        quantizer=quantizer,
        limits=ctx.target.limits.model_dump() if any(ctx.target.limits.model_dump().values()) else None,
    )


def build_stage(
    ctx: RunContext,
    backend: Backend,
    device: DeviceSession,
    onnx_path: Path,
    *,
    reference: Path,
    cs: CalibrationSet | None,
    int8: Int8Plan | None,
    val: InMemorySplit,
    facts: ModelFacts,
    quantizer: QuantizerOptions | None = None,
    torch_program: Path | None = None,
) -> Built:
    """Build the target's artifact into ``run_dir/artifact``; add the ``build`` node.

    ``device``: the run's session to the board (a device build, and ``--calibrator auto``'s candidates);
    ``quantizer``: the options of the quantize stage that made ``onnx_path`` (a QDQ backend's INT8).
    """
    out = ctx.run_dir / "artifact"
    own = int8 is not None and int8.source == "calibration"
    method = int8.method if own else None
    extra: dict[str, Any] = {}
    with stage(ctx, "build") as fields:
        if own and int8.search == "best":
            artifact, extra = _auto(
                ctx, (backend, device), (onnx_path, reference, torch_program), cs, int8, (val, facts), out
            )
        elif own and int8.search == "first_passing":
            artifact, extra = _first_passing(
                ctx, backend, int8, (onnx_path, reference, torch_program), cs, (out, facts)
            )
        else:
            options = _options(ctx, facts, backend.quantizer_options(method=method) if own else quantizer)
            where = ctx.run_dir / "staged" if backend.build_location == "device" else out
            artifact = backend.build(
                onnx_path, options, where, calib=cs, reference=reference, torch_program=torch_program
            )
            if backend.build_location == "device":
                artifact = build_on_device(ctx, device, where, out)
    size = artifact_size(artifact)
    quant = artifact.meta.get("quantization") or {}
    how = f" ({quant['method']}, {backend.name}'s own quantizer)" if own else ""
    add_node(
        ctx,
        "build",
        {
            "backend": backend.name,
            "precision": ctx.target.precision,
            "method": quant.get("method"),
            **_device_config(artifact.device_build),
        },
        fields,
        label=_label(backend, ctx.target.precision, how, artifact.device_build),
        metrics={**facts.stats, "size_bytes": size},
        inputs={"calibration": cs.sha256} if own else {},
        outputs={f"artifact/{k}": v for k, v in artifact.meta.get("sha256", {}).items()},
        tools=artifact.meta.get("tools", {}),
        extra={
            "parity": artifact.meta.get("parity"),
            "quantization": quant or None,
            "device_build": artifact.meta.get("device_build"),
            **extra,
        },
    )
    return Built(out, size)


def artifact_size(artifact: Artifact) -> int:
    """Bytes the device holds: the backend's ``payload_bytes`` if set (an MCU's model, not its C source)."""
    if artifact.meta.get("payload_bytes") is not None:
        return int(artifact.meta["payload_bytes"])
    return int(sum((artifact.dir / f).stat().st_size for f in artifact.files.values()))


def _device_config(device_build: DeviceBuild | None) -> dict:
    """A device build's board and runtime version: another board or TensorRT is another node."""
    if device_build is None:
        return {}
    device = device_build.device or {}
    return {"built_on": device_build.on, "runtime_version": device_build.version,
            "device_machine": device.get("machine"), "device_platform": device.get("platform")}  # fmt: skip


def _label(backend: Backend, precision: str, how: str, device_build: DeviceBuild | None) -> str:
    if device_build is not None:
        on, version = device_build.on, device_build.version
        return (
            f"{backend.name} {precision} engine built on {on} ({backend.name} {version}); "
            "the staged ONNX checked against FP32 on the host"
        )
    return f"{backend.name} {precision} artifact{how}, checked against FP32"


def build_on_device(ctx: RunContext, device: DeviceSession, staged: Path, out: Path) -> Artifact:
    """Push a staged build to the target's device, build it there, fetch the completed artifact."""
    from edgekit.device.agent import Agent

    with device() as transport:
        return Agent(transport).build_on_device(staged, out, progress=ctx.progress)


def _first_passing(
    ctx: RunContext, backend: Backend, int8: Int8Plan, sources: tuple, cs: CalibrationSet, into: tuple
) -> tuple[Artifact, dict]:
    """``--calibrator default`` for a self-quantizing backend, as ``edgekit build`` does it.

    The backend's methods in order, each with its declared fallback settings (more of the head in float)
    before the next method; the first build whose detections pass the FP32 check ships. A failed build leaves
    nothing at ``out``. What was tried is recorded on the node.
    """
    onnx_path, reference, torch_program = sources
    out, facts = into
    tried: list[dict[str, Any]] = []
    small: list[CalibrationError] = []
    for method in int8.methods:
        for update in ({}, *int8.fallback):
            try:
                options = _options(ctx, facts, backend.quantizer_options(method=method, **update))
                artifact = backend.build(
                    onnx_path, options, out, calib=cs, reference=reference, torch_program=torch_program
                )
            except (BuildError, CalibrationError) as exc:
                tried.append({"method": method, **update, "error": exc.message})
                small += [exc] if isinstance(exc, CalibrationError) else []
                continue
            figures = (artifact.meta.get("parity") or {}).get("detections") or {}
            tried.append({"method": method, **update, **{k: figures.get(k) for k in ("kept", "score_error")}})
            return artifact, {"calibration_search": tried}
    if len(small) == len(tried):
        raise small[0]
    raise BuildError(
        f"no calibration method of {backend.name} keeps FP32's detections: "
        + "; ".join(f"{t['method']}: {t['error']}" for t in tried),
        "calibrate on more (and more varied) images (--calib), or try another target",
    )


def _auto(
    ctx: RunContext,
    on: tuple[Backend, DeviceSession],
    sources: tuple,
    cs: CalibrationSet,
    int8: Int8Plan,
    eval_on: tuple[InMemorySplit, ModelFacts],
    out: Path,
):
    """Build every method of the backend's quantizer, measure each on the target, ship the best.

    ``on``: the backend and the run's device session; ``eval_on``: (the val split the candidates are
    scored on, the model's facts).
    """
    onnx_path, reference, torch_program = sources
    val, facts = eval_on
    (backend, device), max_drop = on, int8.max_drop
    base = fp32_map50_95(ctx)
    candidates: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-auto-") as tmp:
        for method in int8.methods:
            folder = Path(tmp) / f"int8-{method}"
            try:
                options = _options(ctx, facts, backend.quantizer_options(method=method))
                art = backend.build(
                    onnx_path, options, folder, calib=cs, reference=reference, torch_program=torch_program
                )
            except (BuildError, CalibrationError) as exc:
                candidates.append({"name": f"int8-{method}", "method": method, "error": exc.message})
                continue
            scores = measure(ctx, device, folder, val)
            drop = (base - scores["map50_95"]) * 100.0
            size = sum((folder / f).stat().st_size for f in art.files.values())
            candidates.append(
                {
                    "name": f"int8-{method}",
                    "method": method,
                    **scores,
                    "size_bytes": size,
                    "drop": round(drop, 4),
                    "within": drop <= max_drop,
                    "path": str(folder),
                }
            )
        hint = "check the calibration set and the model; try another backend"
        chosen, passed = choose(candidates, f"{backend.name} quantizer method built", hint)
        shutil.copytree(chosen["path"], out)  # the measured folder, byte for byte
    rows = [{k: v for k, v in c.items() if k != "path"} | {"chosen": c is chosen} for c in candidates]
    return Artifact.load(out), {"candidates": rows, "auto_passed": passed, "fp32_map50_95": base}
