"""The device side of a deploy: resolve the transport, run the artifact, score its outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.config import Target
from edgekit.errors import ConfigError, EdgekitError
from edgekit.report.record import latency_stats
from edgekit.stages.context import RunContext, add_node, eval_tensors, stage


def bench_and_eval(ctx: RunContext, artifact_dir: Path, val, transport) -> None:
    """Run the artifact on the device: timing loop + eval set; add the ``eval`` and ``bench`` nodes."""
    from edgekit.device.agent import Agent
    from edgekit.device.power import NullSampler
    from edgekit.models.train import map_from_candidates

    rt = ctx.target.runtime
    with stage(ctx, "bench") as fields:
        inputs = eval_tensors(val)
        result = Agent(transport, sampler=NullSampler()).bench(
            artifact_dir,
            bench_input=inputs[:1],
            eval_inputs=inputs,
            warmup=rt.warmup,
            min_warmup_s=rt.min_warmup_s,
            iterations=rt.iterations,
            min_seconds=rt.min_seconds,
            threads=rt.threads,
            cpus=rt.cpu_affinity,
            progress=ctx.progress,
        )
        scores = map_from_candidates(val, result.detections)
    dep = ctx.deployed_stats
    add_node(
        ctx,
        "eval",
        {"images": len(val), "conf": 0.001, "iou": 0.5},
        dict(fields),
        label=f"mAP from the device's own outputs ({len(val)} images)",
        metrics={**dep, "size_bytes": ctx.artifact_bytes, **scores},
        tools={result.runtime: result.runtime_version},
    )
    metrics = {
        "latency_ms": {k: round(v, 4) for k, v in latency_stats(result.latencies_ms).items()},
        "fps": round(result.fps, 2),
        "first_ms": round(result.first_ms, 3),
        **scores,
        "size_bytes": ctx.artifact_bytes,
    }
    if result.power_w is not None:
        metrics["power_w"] = result.power_w
    if result.energy_mj is not None:
        metrics["energy_mj_per_inference"] = result.energy_mj
    add_node(
        ctx,
        "bench",
        {
            "warmup": rt.warmup,
            "iterations": rt.iterations,
            "min_seconds": rt.min_seconds,
            "threads": result.threads,
            "device": transport.name,
        },
        dict(fields),
        label=f"{len(result.latencies_ms)} timed runs on {transport.name}",
        metrics=metrics,
        tools={result.runtime: result.runtime_version},
        extra={
            "latencies_ms": [round(x, 4) for x in result.latencies_ms],
            "device": result.device,
            "pinned": result.raw.get("pinned"),
            "governor_expected": rt.governor,
            "power_note": result.power_note,
            "thermal_before": result.thermal_before,
            "thermal_after": result.thermal_after,
        },
    )


def check_target_ready(target: Target, device: str | None) -> tuple[type, Callable[[], Any]]:
    """Resolve the target's backend and a transport factory before any work starts.

    Raises:
        EdgekitError: The backend is not built yet, its runtime is missing, or the device cannot be reached
            by any transport this version has.
    """
    from edgekit.registry import BACKENDS

    backend_cls = BACKENDS.get(target.backend)
    if target.precision not in backend_cls.precisions:
        raise ConfigError(
            f"target '{target.name}': backend {target.backend} cannot build {target.precision}",
            f"use one of {', '.join(backend_cls.precisions)} in {target.source}",
        )
    if device == "local" or target.connection.type == "local":
        from edgekit.device.transport import LocalTransport

        return backend_cls, LocalTransport
    raise EdgekitError(
        f"target '{target.name}' is reached over SSH, and the SSH agent is not built yet in this version",
        "run the target's artifact on this host with --device local "
        f"(make deploy TARGET={target.name} DEVICE=local)",
    )
