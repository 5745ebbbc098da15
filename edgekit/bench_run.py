"""``edgekit bench``: measure a built artifact on a target's device and write a run folder.

The folder is the same as a deploy's (``record.json`` — the truth —, ``summary.json``, ``report.md``
and ``report.html``), with an ``artifact`` node instead of the compress/quantize chain, then the
``eval`` node (mAP from the device's own outputs, when ``--data`` gives an eval set) and the ``bench``
node. The folder appears whole or not at all: it is written under a temporary name and renamed when
the measurement succeeded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.core.errors import ConfigError

if TYPE_CHECKING:
    from edgekit.backends.contract.artifact import Artifact
    from edgekit.core.config import Target
    from edgekit.device.transport import Transport
    from edgekit.models.train import InMemorySplit
    from edgekit.stages.context import Built, RunContext


def bench_run(
    target_name: str,
    artifact_dir: str | Path,
    *,
    data: str | Path | None = None,
    device: str | None = None,
    iterations: int | None = None,
    out: str | Path = "runs",
    run_id: str | None = None,
    command: list[str] | None = None,
    progress: bool = True,
) -> Path:
    """Bench ``artifact_dir`` on ``target_name``'s device; return the run folder.

    Args:
        target_name: Target name or YAML path.
        artifact_dir: A built artifact folder; its backend must be the target's.
        data: A YOLO dataset folder whose ``val`` split is the eval set (``None`` = timing only).
        device: ``"local"`` runs on this host whatever the target's connection says.
        iterations: Override the target's timed iterations (and drop its minimum seconds).
        out: Parent folder of the run folder.
        run_id: Run folder name (default ``<time>-<target>-bench``).
        command: The command line, for the record.
        progress: Progress bars.

    Raises:
        ConfigError: The artifact's backend is not the target's (both are named), or bad options.
        DeviceError: Anything the device did wrong (nothing is written then).
    """
    from edgekit.backends.contract.base import Artifact
    from edgekit.core.config import load_target
    from edgekit.core.files import atomic_dir
    from edgekit.device.cpuprobe import on_a_board, probed_on, record_cpu
    from edgekit.report.record import RunRecord
    from edgekit.stages.bench import check_target_ready
    from edgekit.stages.context import RunContext

    target = load_target(target_name)
    artifact = Artifact.load(artifact_dir)
    refuse_foreign_artifact(artifact, target, artifact_dir)
    _, transport_factory = check_target_ready(target, device)
    val = _eval_split(data, artifact) if data else None
    run_dir = Path(out) / (run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{target.name}-bench")
    if run_dir.exists():
        raise ConfigError(f"run folder {run_dir} already exists", "choose another --run-id or remove it")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(run_dir) as work:
        record = RunRecord.new(run_dir.name, command or [], target.model_dump(mode="json"), {"name": "bench"})
        ctx = RunContext(target, work, record, artifact.preprocess, progress)
        built = _artifact_node(ctx, artifact)
        with transport_factory() as transport:
            if on_a_board(ctx.target, device):  # the board's CPU, read from it (edgekit.device.cpuprobe)
                ctx.target = probed_on(ctx.target, transport)
                record_cpu(record, ctx.target)
            _measure(ctx, built, artifact, val, transport, iterations)
        record.status = "ok"
        _write(ctx)
    return run_dir


def refuse_foreign_artifact(artifact: Artifact, target: Target, artifact_dir: str | Path) -> None:
    """A target runs its own backend's artifacts: never swap the backend to fit.

    Raises:
        ConfigError: Naming both backends and what to do.
    """
    if artifact.backend != target.backend:
        raise ConfigError(
            f"artifact {artifact_dir} was built for backend {artifact.backend}, target '{target.name}' "
            f"runs {target.backend}",
            f"build it with `edgekit build --backend {target.backend} ...`, or bench it on a target "
            f"that runs {artifact.backend}",
        )


def _eval_split(data: str | Path, artifact: Artifact) -> InMemorySplit:
    from edgekit.data.dataset import YoloDataset
    from edgekit.models.train import InMemorySplit

    root = Path(data)
    if not (root / "data.yaml").is_file() and not (root / "images" / "val").is_dir():
        raise ConfigError(
            f"--data {root} is not a YOLO dataset folder (no data.yaml or images/val)",
            "give the dataset folder the model was trained on; its val split is the eval set",
        )
    return InMemorySplit(YoloDataset(root, "val"), artifact.preprocess)


def _artifact_node(ctx: RunContext, artifact: Artifact) -> Built:
    from edgekit.stages.build import artifact_size
    from edgekit.stages.context import Built, add_node

    size = artifact_size(artifact)
    add_node(
        ctx,
        "artifact",
        {"backend": artifact.backend, "precision": artifact.precision, "sha256": artifact.meta["sha256"]},
        {},
        label=f"{artifact.backend} {artifact.precision} artifact {artifact.dir.name}",
        metrics={"size_bytes": size},
    )
    return Built(artifact.dir, size)


def _measure(
    ctx: RunContext,
    built: Built,
    artifact: Artifact,
    val: InMemorySplit | None,
    transport: Transport,
    iterations: int | None,
) -> None:
    from edgekit.stages.bench import bench_and_eval, bench_only

    if val is not None:
        bench_and_eval(ctx, built, val, transport, {})
        return
    shape = [int(d) for d in artifact.meta["input"]["shape"]]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    bench_only(ctx, built, x, transport, iterations)


def _write(ctx: RunContext) -> None:
    from edgekit.history.index import index_run
    from edgekit.report.render import render_run
    from edgekit.report.summary import build_summary, write_summary

    ctx.record.summary = build_summary(ctx.record)
    ctx.save()
    write_summary(ctx.record, ctx.run_dir)
    render_run(ctx.run_dir)
    index_run(ctx.run_dir)
