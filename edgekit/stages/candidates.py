"""Measure INT8 candidates on the target: build each one, run it through the agent, score its outputs.

Used by ``--calibrator auto`` for every backend: a QDQ backend's candidates are QDQ files made by
``edgekit.quantize``; a self-quantizing backend's are its own methods. Either way the accuracy comes
from the device's outputs, and the candidate that ships is the artifact that was measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.stages.context import RunContext, eval_tensors

if TYPE_CHECKING:
    from edgekit.device.transport import DeviceSession
    from edgekit.models.train import InMemorySplit


def measure(ctx: RunContext, device: DeviceSession, artifact_dir: Path, val: InMemorySplit) -> dict[str, Any]:
    """Score a built candidate: mAP from the device's outputs on ``val`` and a short latency p50.

    ``device``: the run's session to the board (one connection for every candidate).
    """
    from edgekit.models.train import map_from_candidates

    inputs = eval_tensors(val)
    with device() as transport:
        result = _bench(transport, artifact_dir, inputs, ctx)
    return {**map_from_candidates(val, result.detections), "latency_ms_p50": result.stats["p50"]}


def _bench(transport, artifact_dir: Path, inputs, ctx: RunContext):
    from edgekit.device.agent import Agent, BenchPlan
    from edgekit.device.provision import prepare_command

    return Agent(transport, prepare=prepare_command(ctx.target)).bench(
        artifact_dir,
        BenchPlan(
            bench_input=inputs[:1],
            eval_inputs=inputs,
            warmup=5,
            min_warmup_s=0.0,
            iterations=50,
            min_seconds=0.0,
            threads=ctx.target.runtime.threads,
        ),
        progress=False,
    )
