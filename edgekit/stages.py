"""The deploy stages. Each takes the run context, does one thing, and adds one record node.

Stages talk through files in the run folder and through the record; nothing here keeps global state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.config import Target
from edgekit.data.preprocess import PreprocessSpec
from edgekit.errors import ConfigError, EdgekitError
from edgekit.report.record import Node, RunRecord, latency_stats, now_iso


@dataclass
class RunContext:
    """Everything a stage may read: the request, the target, the run folder and the record."""

    target: Target
    run_dir: Path
    record: RunRecord
    spec: PreprocessSpec
    progress: bool = True
    calib_root: Path = Path("calibration")
    epochs_scale: float = 1.0
    state: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        """Persist the record (atomic) after every stage."""
        self.record.save(self.run_dir / "record.json")


@contextmanager
def stage(ctx: RunContext, name: str):
    """Time a stage and, on failure, mark the record with where and why it stopped."""
    started, t0 = now_iso(), time.perf_counter()
    fields: dict[str, Any] = {"started": started}
    try:
        yield fields
    except EdgekitError as exc:
        ctx.record.status, ctx.record.failed_stage = "failed", name
        ctx.record.error = {"message": exc.message, "hint": exc.hint}
        ctx.save()
        raise
    fields["ended"], fields["seconds"] = now_iso(), round(time.perf_counter() - t0, 3)


def add_node(ctx: RunContext, stage_name: str, config: dict, fields: dict, **kw: Any) -> Node:
    """Add a node for a finished stage and save the record."""
    node = ctx.record.child(stage_name, config, **fields, **kw)
    ctx.save()
    return node


def model_stats(model, spec: PreprocessSpec) -> dict[str, int]:
    """Params, MACs and state-dict bytes of a torch model at the spec's input size."""
    import io

    import torch

    from edgekit.export.onnx import model_macs_params

    stats = model_macs_params(model, spec.input_shape())
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return {"params": int(stats["params"]), "macs": int(stats["macs"]), "size_bytes": buf.getbuffer().nbytes}


def eval_tensors(val) -> np.ndarray:
    """Stack the validation split's preprocessed tensors into ``(N, C, H, W)``."""
    return np.concatenate([val.tensor(i) for i in range(len(val))], 0)


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
            progress=ctx.progress,
        )
        scores = map_from_candidates(val, result.detections)
    dep = ctx.state["deployed_stats"]
    add_node(
        ctx,
        "eval",
        {"images": len(val), "conf": 0.001, "iou": 0.5},
        dict(fields),
        label=f"mAP from the device's own outputs ({len(val)} images)",
        metrics={**dep, "size_bytes": ctx.state["artifact_bytes"], **scores},
        tools={result.runtime: result.runtime_version},
    )
    metrics = {
        "latency_ms": {k: round(v, 4) for k, v in latency_stats(result.latencies_ms).items()},
        "fps": round(result.fps, 2),
        "first_ms": round(result.first_ms, 3),
        **scores,
        "size_bytes": ctx.state["artifact_bytes"],
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
