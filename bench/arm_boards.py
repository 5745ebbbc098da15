"""Issue 44: what runs on an ARM board is what is reported. ORT, MNN and ncnn x fp32 / fp16 / int8, the same
artifacts on this x86 host and on the emulated Cortex-A72 (Pi 4) and Cortex-A76 (RK3588) boards.

Each artifact is built once on this host from the built-in reference (as `bench/runtimes.py` builds them)
and run through the agent three times: here (LocalTransport), and over SSH on each board simulator (qemu-user
running the runtimes' real aarch64 kernels: NEON on the A72; sdot and fp16 arithmetic on the A76). Per run:
mAP@0.5:0.95 from that device's own outputs on the first ``--images`` val images, the largest difference of
the device's raw output from this host's on one fixed input (the agent's guard), and the timing p50. The
boards' time is emulator time: it is reported only as a slowdown factor against this host, never as board
latency. Two variants say which arithmetic a board runs: MNN's fp16 artifact at runtime precision ``low``
(fp16 arithmetic where the core has it) beside its default ``high``, and ncnn int8 with fp16 arithmetic on.

Resumable: each finished (artifact, device) row is kept in ``bench/results/arm-boards-state.json``.

Usage: python bench/arm_boards.py [--images 120] [--boards rpi4,rk3588] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, SPEC, save, setup, table
from runtimes import PLAN, build

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.calib import import_set  # noqa: E402
from edgekit.core.config import SSHConnection  # noqa: E402
from edgekit.core.errors import EdgekitError  # noqa: E402
from edgekit.core.registry import BACKENDS  # noqa: E402
from edgekit.data.dataset import YoloDataset  # noqa: E402
from edgekit.device.agent import Agent, BenchPlan  # noqa: E402
from edgekit.device.sim.board import BoardSim  # noqa: E402
from edgekit.device.ssh import SSHTransport  # noqa: E402
from edgekit.device.transport import LocalTransport  # noqa: E402
from edgekit.export.onnx import export_onnx, export_torchscript  # noqa: E402
from edgekit.models.train import InMemorySplit, map_from_candidates  # noqa: E402
from edgekit.stages.bench import host_guard  # noqa: E402

STATE = RESULTS / "arm-boards-state.json"
#: Variants of a built artifact: a name and the runtime flags changed in its artifact.json.
VARIANTS = {
    ("mnn", "fp16"): {"fp16-low": {"precision": "low"}},
    ("ncnn", "int8"): {
        "fp16-arith": {"use_fp16_storage": True, "use_fp16_packed": True, "use_fp16_arithmetic": True}
    },
}


def artifacts(work: Path, trained, root) -> list[tuple[str, Path]]:
    """Every (name, artifact folder) of the plan, built here once."""
    fp32 = export_onnx(trained.model, SPEC.input_shape(), work / "fp32.onnx")
    ts = export_torchscript(trained.model, SPEC.input_shape(), work / "fp32.pt")
    cs = import_set(root, "bench", root=work / "calib", from_dataset=True, split="calib", spec=SPEC).set
    out = []
    for backend, precisions in PLAN.items():
        be = BACKENDS.get(backend)
        for precision in precisions:
            method = None if precision != "int8" or be.int8_source == "qdq" else be.methods[0]
            try:
                art = build(backend, precision, fp32, ts, cs, work, method)
            except EdgekitError as exc:
                print(f"refused: {backend} {precision}: {exc.message}", flush=True)
                continue
            out.append((f"{backend} {precision}", art.dir))
            for variant, flags in VARIANTS.get((backend, precision), {}).items():
                copy = work / f"{art.dir.name}-{variant}"
                shutil.copytree(art.dir, copy)
                meta = json.loads((copy / "artifact.json").read_text())
                meta["runtime"].update(flags)
                (copy / "artifact.json").write_text(json.dumps(meta, indent=1))
                out.append((f"{backend} {precision} {variant}", copy))
    # ncnn's int8 Winograd question: ncnn2table gives 3x3 stride-1 convolutions 6-bit weights because its
    # int8 Winograd F(4,3) kernel needs them; the same model with 8-bit weights everywhere, run on the
    # boards' real kernels, says whether the rule matters there.
    from edgekit.backends.ncnn import calibration

    rule = calibration._winograd_6bit
    calibration._winograd_6bit = lambda layer: False
    (work / "w8").mkdir(exist_ok=True)
    try:
        art = build("ncnn", "int8", fp32, ts, cs, work / "w8", BACKENDS.get("ncnn").methods[0])
        out.append(("ncnn int8 8-bit-3x3", art.dir))
    except EdgekitError as exc:
        print(f"refused: ncnn int8 8-bit-3x3: {exc.message}", flush=True)
    finally:
        calibration._winograd_6bit = rule
    return out


def run(transport, folder: Path, inputs: np.ndarray, val, slow: bool, features=None) -> dict:
    res = Agent(transport).bench(
        folder,
        BenchPlan(
            bench_input=inputs[:1],
            eval_inputs=inputs,
            warmup=2 if slow else 20,
            min_warmup_s=0.0 if slow else 0.5,
            iterations=10 if slow else 100,
            min_seconds=0.0,
            threads=2,
            guard=host_guard(folder, inputs[:1], features),
        ),
        progress=False,
    )
    cpu = res.device.get("cpu") or {}
    return {
        **map_from_candidates(val, res.detections),
        "p50_ms": res.stats["p50"],
        "max_abs_vs_x86": (res.guard or {}).get("max_abs"),
        "cosine_vs_x86": (res.guard or {}).get("cosine"),
        "cpu": f"{cpu.get('model')} ({cpu.get('int8_dot')})",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=120, help="val images each device runs (the same ones)")
    ap.add_argument("--boards", default="rpi4,rk3588", help="board simulators")
    ap.add_argument("--fresh", action="store_true", help="forget the rows of an earlier run")
    args = ap.parse_args()
    root, trained, _ = setup()
    val = InMemorySplit(YoloDataset(root, "val"), SPEC, limit=args.images)
    inputs = np.concatenate([val.tensor(i) for i in range(len(val))], 0)
    state = {} if args.fresh or not STATE.is_file() else json.loads(STATE.read_text())
    started = {}
    for board in args.boards.split(","):
        t = time.perf_counter()
        conn = BoardSim(board).start()
        started[board] = (SSHConnection(**conn.to_connection()), round(time.perf_counter() - t, 1))
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in artifacts(Path(tmp), trained, root):
            devices = [("x86", None)] + [(b, c) for b, (c, _) in started.items()]
            for device, conn in devices:
                key = f"{name}@{device}"
                if key in state and "refused" not in state[key]:  # a refusal is tried again
                    continue
                start = time.perf_counter()
                try:
                    if conn is None:
                        row = run(LocalTransport(), folder, inputs, val, slow=False)
                    else:
                        with SSHTransport.from_connection(conn) as t:
                            features = list(BoardSim(device).profile.features)
                            row = run(t, folder, inputs, val, slow=True, features=features)
                except EdgekitError as exc:
                    row = {"refused": exc.message[:400]}
                row.update(artifact=name, device=device, wall_s=round(time.perf_counter() - start, 1))
                state[key] = row
                RESULTS.mkdir(parents=True, exist_ok=True)
                STATE.write_text(json.dumps(state, indent=1))
                print(json.dumps(row), flush=True)
    rows = []
    for r in state.values():
        x86 = state.get(f"{r['artifact']}@x86") or {}
        slowdown = r["p50_ms"] / x86["p50_ms"] if r.get("p50_ms") and x86.get("p50_ms") else None
        rows.append(
            [r["artifact"], r["device"], r.get("cpu"), r.get("map50_95"), r.get("max_abs_vs_x86"),
             None if r["device"] == "x86" else slowdown, r.get("refused", "")[:80]]
        )  # fmt: skip
    headers = [
        "artifact",
        "device",
        "cpu (int8 path)",
        "mAP@0.5:0.95",
        "max |out - x86|",
        "emulator slowdown",
    ]
    headers += ["refused"]
    print(table(headers, rows))
    save("arm-boards", {"images": len(val), "headers": headers, "rows": rows, "sim_start_s": started and {
        b: s for b, (_, s) in started.items()}})  # fmt: skip


if __name__ == "__main__":
    main()
