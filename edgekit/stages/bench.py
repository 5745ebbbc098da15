"""The device side of a deploy: resolve the transport, run the artifact, score its outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.core.config import RuntimeOptions, SerialLink, Target
from edgekit.core.errors import ConfigError, DeviceError
from edgekit.report.record import latency_stats
from edgekit.stages.context import Built, RunContext, add_node, eval_tensors, stage

if TYPE_CHECKING:
    from edgekit.device.agent import BenchResult
    from edgekit.device.runner_io import Guard
    from edgekit.device.transport import Transport
    from edgekit.models.train import InMemorySplit


def host_guard(artifact_dir: Path, x: np.ndarray, device_features: list[str] | None = None) -> Guard | None:
    """The host's output for ``x`` from the same artifact, for the device's correctness guard.

    ``None`` when this host cannot run the artifact's backend (the record then says the guard was not
    checked and why). When the device computes the artifact in fp16 (``device_features``: its CPU's) and
    this host in fp32, the tolerance is fp16 arithmetic's (``contract.base.FP16_ARITHMETIC``).
    """
    from edgekit.backends.contract.base import FP16_ARITHMETIC, Artifact
    from edgekit.core.registry import get_backend
    from edgekit.device.runner_io import Guard
    from edgekit.runners.runcore import cpu_features

    artifact = Artifact.load(artifact_dir)
    backend = get_backend(artifact.backend)
    try:
        reference = np.asarray(backend.infer(artifact, x)[0], dtype=np.float32)
    except Exception:  # noqa: BLE001 - runtime missing or unable here: the guard is skipped and says so
        return None
    tol = backend.parity.get(artifact.precision) or backend.parity["fp32"]
    tools = ", ".join(f"{k} {v}" for k, v in (artifact.meta.get("tools") or {}).items())
    source = f"the host's {artifact.backend} run of the same artifact ({tools or 'host runtime'})"
    on_device = backend.arithmetic(artifact.meta, device_features) if device_features is not None else None
    if (
        on_device
        and "fp16" in on_device
        and on_device != backend.arithmetic(artifact.meta, cpu_features()["features"])
    ):
        tol = FP16_ARITHMETIC
        source += "; the device computes in fp16, this host in fp32: fp16 arithmetic's tolerance"
    return Guard(
        reference,
        source,
        min_cosine=tol.min_cosine,
        min_part_cosine=tol.min_part_cosine,
        head=artifact.meta["output"].get("head"),
    )


def run_on_device(
    target: Target,
    transport: Transport,
    artifact_dir: Path,
    x: np.ndarray,
    eval_x: np.ndarray | None,
    *,
    progress: bool,
    iterations: int | None = None,
) -> BenchResult:
    """Bench ``artifact_dir`` on the target's device with its sampler, idle baseline and guard."""
    from edgekit.device.agent import Agent, BenchPlan
    from edgekit.device.power import sampler_for
    from edgekit.device.provision import prepare_command

    rt = target.runtime
    sampler = sampler_for(target.power)
    idle_s = target.power.idle_s if target.connection.type == "ssh" else min(target.power.idle_s, 2.0)
    return Agent(transport, sampler=sampler, prepare=prepare_command(target)).bench(
        artifact_dir,
        BenchPlan(
            bench_input=x,
            eval_inputs=eval_x,
            warmup=rt.warmup,
            min_warmup_s=rt.min_warmup_s,
            iterations=iterations or rt.iterations,
            min_seconds=rt.min_seconds if iterations is None else 0.0,
            threads=rt.threads,
            cpus=rt.cpu_affinity,
            idle_s=idle_s,
            guard=host_guard(artifact_dir, x, _device_features(target)),
            **serial_runner(rt.serial),
        ),
        progress=progress,
    )


def _device_features(target: Target) -> list[str] | None:
    from edgekit.core.config import device_cpu

    cpu, _ = device_cpu(target)
    return list(cpu["features"]) if cpu else None


def serial_runner(serial: SerialLink | None) -> dict[str, Any]:
    """For an MCU on a serial port: the serial runner and its port arguments (else nothing)."""
    if serial is None:
        return {}
    args = ["--port", serial.port, "--baud", str(serial.baud), "--timeout", str(serial.timeout)]
    return {"runner": "mcu_serial_run.py", "runner_args": tuple(args)}


def bench_and_eval(
    ctx: RunContext, built: Built, val: InMemorySplit, transport: Transport, stats: dict[str, int]
) -> None:
    """Run the artifact on the device: timing loop + eval set; add the ``eval`` and ``bench`` nodes.

    ``stats``: params / MACs of the deployed model (the eval node carries them).
    """
    from edgekit.models.train import map_from_candidates

    with stage(ctx, "bench") as fields:
        inputs = eval_tensors(val)
        result = run_on_device(ctx.target, transport, built.dir, inputs[:1], inputs, progress=ctx.progress)
        scores = map_from_candidates(val, result.detections)
    add_node(
        ctx,
        "eval",
        {"images": len(val), "conf": 0.001, "iou": 0.5},
        dict(fields),
        label=f"mAP from the device's own outputs ({len(val)} images)",
        metrics={**stats, "size_bytes": built.size_bytes, **scores},
        tools={result.runtime: result.runtime_version},
    )
    add_bench_node(ctx, result, transport, fields, scores, built)


def bench_only(
    ctx: RunContext, built: Built, x: np.ndarray, transport: Transport, iterations: int | None
) -> None:
    """Time the artifact on the device without an eval set; add the ``bench`` node."""
    with stage(ctx, "bench") as fields:
        result = run_on_device(
            ctx.target, transport, built.dir, x, None, progress=ctx.progress, iterations=iterations
        )
    add_bench_node(ctx, result, transport, fields, {}, built)


def add_bench_node(
    ctx: RunContext, result: BenchResult, transport: Transport, fields: dict, scores: dict, built: Built
) -> None:
    """The ``bench`` node: latency, FPS, power and energy (or why not), device state, arithmetic run."""
    rt, size_bytes = ctx.target.runtime, built.size_bytes
    metrics = {
        "latency_ms": {k: round(v, 4) for k, v in latency_stats(result.latencies_ms).items()},
        "fps": round(result.fps, 2),
        "first_ms": round(result.first_ms, 3),
        **scores,
        "size_bytes": size_bytes,
    }
    metrics.update(power_metrics(result))
    add_node(
        ctx,
        "bench",
        {
            "warmup": rt.warmup,
            "iterations": rt.iterations,
            "min_seconds": rt.min_seconds,
            "threads": result.threads,
            "device": transport.name,
            "emulator": ctx.target.emulator,
            "power": ctx.target.power.model_dump(mode="json"),
            "device_state": result.state_before.identity(),
        },
        dict(fields),
        label=f"{len(result.latencies_ms)} timed runs on {transport.name}"
        + (
            f" (emulated: {ctx.target.emulator}; emulator time, not board time)"
            if ctx.target.emulator
            else ""
        ),
        metrics=metrics,
        tools={result.runtime: result.runtime_version},
        extra={**bench_extra(result, rt), "arithmetic": device_arithmetic(built.dir, result.device)},
    )


def device_arithmetic(artifact_dir: Path, device: dict[str, Any]) -> str | None:
    """What arithmetic the artifact ran in on the device, from the CPU features the device reported.

    ``None`` when the artifact's backend is not installed here.
    """
    from edgekit.backends.contract.base import Artifact
    from edgekit.core.errors import EdgekitError
    from edgekit.core.registry import BACKENDS

    meta = Artifact.load(artifact_dir).meta
    try:
        backend = BACKENDS.get(meta["backend"])
    except EdgekitError:
        return None
    return backend.arithmetic(meta, (device.get("cpu") or {}).get("features"))


def power_metrics(result: BenchResult) -> dict[str, Any]:
    """Power figures of a bench result: measured values, or ``None`` when not measured (never 0)."""
    figures = {
        "power_w": result.power_w,
        "idle_w": result.idle_w,
        "energy_mj_per_inference": result.energy_mj,
        "energy_dynamic_mj_per_inference": result.energy_dynamic_mj,
    }
    return {k: v for k, v in figures.items() if v is not None}  # not measured = left out (the note says why)


def bench_extra(result: BenchResult, rt: RuntimeOptions) -> dict[str, Any]:
    """What a bench node keeps besides its metrics: raw latencies, device facts, power, state, guard."""
    return {
        "latencies_ms": [round(x, 4) for x in result.latencies_ms],
        "window": result.raw.get("window"),
        "device": result.device,
        "pinned": result.raw.get("pinned"),
        "governor_expected": rt.governor,
        "power_mode_expected": rt.power_mode,
        "power_note": result.power_note,
        "power_facts": result.power_facts,
        "power_samples_in_window": result.power_samples,
        "thermal_before": result.thermal_before,
        "thermal_after": result.thermal_after,
        "state_before": result.state_before.raw,
        "state_after": result.state_after.raw,
        "throttling": result.throttling,
        "warmup_settled": result.raw.get("warmup_settled"),
        "guard": result.guard,
        "warnings": result.state_before.warnings(rt.power_mode, rt.governor),
        "device_latency_ms": _device_latency(result.raw),
        "runtime_report": _runtime_report(result.raw),
    }


def _runtime_report(raw: dict[str, Any]) -> dict[str, Any] | None:
    """What a runtime reported beside the runner's own keys (an MCU's cycles, OpenVINO's layer times)."""
    from edgekit.runners.runcore import RESULT_KEYS

    return {k: v for k, v in raw.items() if k not in RESULT_KEYS} or None


def _device_latency(raw: dict[str, Any]) -> dict[str, Any] | None:
    """An MCU's own per-inference time (cycles / core clock), beside the host's round trips."""
    values = raw.get("device_latency_ms")
    return {k: round(v, 4) for k, v in latency_stats(values).items()} if values else None


def check_target_ready(target: Target, device: str | None) -> tuple[type, Callable[[], Any]]:
    """Resolve the target's backend and a transport factory before any work starts.

    Raises:
        EdgekitError: The backend is not built yet, its runtime is missing, or the device cannot be reached
            by any transport this version has.
    """
    from edgekit.core.registry import BACKENDS

    backend_cls = BACKENDS.get(target.backend)
    if target.precision not in backend_cls.precisions:
        raise ConfigError(
            f"target '{target.name}': backend {target.backend} cannot build {target.precision}",
            f"use one of {', '.join(backend_cls.precisions)} in {target.source}",
        )
    from edgekit.device.power import sampler_for

    sampler_for(target.power)  # an unknown sensor or a meter without its command fails here, before work
    if device == "local" or target.connection.type == "local":
        from edgekit.device.transport import LocalTransport

        return backend_cls, LocalTransport
    from edgekit.device.ssh import SSHTransport, _paramiko

    _paramiko()  # missing extra: one clear error now, not after the build
    if device == "sim":
        from edgekit.device.sim.rootfs import unavailable
        from edgekit.device.sim.target import transport_factory

        reason = unavailable()
        if reason:
            raise DeviceError(f"--device sim cannot run here: {reason}", "use --device local")
        return backend_cls, transport_factory(target)
    conn = target.connection
    SSHTransport.from_connection(conn).check_files()  # key and known_hosts exist: before any work
    return backend_cls, lambda: SSHTransport.from_connection(conn)
