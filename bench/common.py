"""Shared setup for the bench scripts: the same data and reference detector as `make deploy TARGET=local`."""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekit.backends.contract.base import BuildOptions
from edgekit.core.registry import BACKENDS
from edgekit.data.dataset import YoloDataset
from edgekit.data.preprocess import PreprocessSpec
from edgekit.data.shapes import ShapesConfig, builtin_dataset
from edgekit.device.agent import Agent, BenchPlan
from edgekit.device.transport import LocalTransport
from edgekit.models.train import InMemorySplit, map_from_candidates
from edgekit.models.zoo import cache_dir, converged_reference

RESULTS = Path(__file__).resolve().parent / "results"
SPEC = PreprocessSpec(input_size=160)


def setup():
    """(dataset root, trained reference, val split) exactly as the default deploy uses them."""
    root = builtin_dataset(cache_dir(), ShapesConfig(image_size=160))
    trained = converged_reference(root, input_size=160)
    val = InMemorySplit(YoloDataset(root, "val"), SPEC)
    return root, trained, val


def emulated_avx2_python(folder: Path) -> str | None:
    """A python launcher that runs under ``qemu-x86_64 -cpu Haswell`` (AVX2, no AVX-512/VNNI), or None.

    ONNX Runtime then dispatches its real AVX2 kernels, so accuracy on an AVX2-only CPU is measured on
    any x86-64 host; its latencies are emulation times and mean nothing.
    """
    import platform
    import shutil
    import sys

    qemu = shutil.which("qemu-x86_64")
    if qemu is None or platform.machine() != "x86_64":
        return None
    cpuinfo = Path(__file__).resolve().parents[1] / "tests" / "runners" / "cpuinfo" / "haswell.txt"
    launcher = folder / "python-avx2"
    launcher.write_text(
        f'#!/bin/sh\nEDGEKIT_CPUINFO={cpuinfo} exec {qemu} -cpu Haswell {sys.executable} "$@"\n'
    )
    launcher.chmod(0o755)
    return str(launcher)


def device_eval(
    onnx_path: Path,
    precision: str,
    val,
    iterations: int = 300,
    min_seconds: float = 3.0,
    threads: int = 2,
    python: str | None = None,
) -> dict:
    """Build for ORT, run through the agent (on this host, or ``python`` = an emulated CPU).

    Returns mAP from the runner's outputs, latency, size, and the CPU the runner reported.
    """
    inputs = np.concatenate([val.tensor(i) for i in range(len(val))], 0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "artifact"
        options = BuildOptions(
            precision=precision, threads=threads, preprocess=SPEC, head="yolov5", num_classes=val.num_classes
        )
        BACKENDS.get("onnxruntime")().build(onnx_path, options, out)
        res = Agent(LocalTransport(), python=python).bench(
            out,
            BenchPlan(
                bench_input=inputs[:1],
                eval_inputs=inputs,
                warmup=2 if python else 50,
                min_warmup_s=0.0 if python else 1.0,
                iterations=iterations,
                min_seconds=min_seconds,
                threads=threads,
            ),
            progress=False,
        )
        size = (out / "model.onnx").stat().st_size
    return {
        **map_from_candidates(val, res.detections),
        "p50_ms": res.stats["p50"],
        "p99_ms": res.stats["p99"],
        "mean_ms": res.stats["mean"],
        "size_bytes": size,
        "cpu": res.device.get("cpu", {}),
    }


def save(name: str, payload: dict) -> Path:
    """Write ``bench/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M:%S"), **payload}, indent=2))
    return path


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table."""

    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def cached_steps(recipe: str) -> list[Path]:
    """The compress cache's finished steps (``step_<i>.pt``, in order) of ``recipe``'s latest run.

    A recipe's folder is ``<recipe>-<16 hex digits of its inputs>`` (``edgekit.stages.model.compress_key``),
    so ``default`` does not pick up ``default-fpgm``'s (nor a control's, ``<recipe>-control-<key>``).
    """
    root = cache_dir() / "compress"
    folders = [
        p for p in root.glob(f"{recipe}-*") if re.fullmatch(rf"{re.escape(recipe)}-[0-9a-f]{{16}}", p.name)
    ]
    if not folders:
        return []
    latest = max(folders, key=lambda p: p.stat().st_mtime)
    return sorted(latest.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
