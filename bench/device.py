"""Issue 15: the SSH agent and TensorRT's QDQ form, measured side by side in one run.

1. Agent overhead: the same artifact and runner, called through the agent on this host (LocalTransport)
   and over SSH to a real sshd on 127.0.0.1 (SSHTransport), alternating rounds; latency p50 ratio and
   the fixed cost of a bench (push, state, fetch).
2. Energy integration error: synthetic traces of known energy (sampled at 100 ms with jitter), and the
   simulated Jetson over SSH whose power is a known ramp (tegrastats and INA3221 samplers).
3. Time to detect a dead link: the board in its own network namespace, link cut mid-run.
4. INT8 mAP of the TensorRT-form QDQ model in ONNX Runtime against today's QDQ (same calibration set).

Usage: python bench/device.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml
from common import SPEC, device_eval, save, setup, table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgekit.backends.contract.base import BuildOptions  # noqa: E402
from edgekit.backends.tensorrt.form import check_trt_qdq, quantize_trt_qdq  # noqa: E402
from edgekit.bench_run import bench_run  # noqa: E402
from edgekit.calib import import_set  # noqa: E402
from edgekit.core.errors import HostUnreachableError  # noqa: E402
from edgekit.core.registry import get_backend  # noqa: E402
from edgekit.device.agent import Agent, BenchPlan  # noqa: E402
from edgekit.device.power import energy_per_inference  # noqa: E402
from edgekit.device.transport import LocalTransport  # noqa: E402
from edgekit.export.onnx import export_onnx  # noqa: E402
from edgekit.quantize import quantize_int8  # noqa: E402
from edgekit.quantize.form import host_qdq_form  # noqa: E402
from edgekit.report.record import RunRecord  # noqa: E402
from tests.device.fakeboard.fakeboard import load_ramp, make_fakeboard, start_sysfs_writer, true_energy_j  # noqa: E402
from tests.device.sshbed import SshServer, netns_available, sshd_available  # noqa: E402


def agent_overhead(work: Path, fp32: Path, val, rounds: int) -> dict:
    """p50 and bench wall time through LocalTransport vs SSHTransport (loopback sshd), alternating."""
    inputs = np.concatenate([val.tensor(i) for i in range(len(val))], 0)
    art = get_backend("onnxruntime").build(
        fp32, BuildOptions(precision="fp32", threads=2, preprocess=SPEC, head="yolov5"), work / "ovh-art"
    )
    srv = SshServer(work / "ovh-ssh")
    srv.start()
    rows = {"local": [], "ssh": []}
    try:
        for _ in range(rounds):
            for kind in ("local", "ssh"):
                transport = LocalTransport() if kind == "local" else srv.transport(python=sys.executable)
                with transport:
                    t = time.monotonic()
                    res = Agent(transport, python=sys.executable).bench(
                        art.dir,
                        BenchPlan(
                            bench_input=inputs[:1],
                            warmup=50,
                            min_warmup_s=1.0,
                            iterations=500,
                            min_seconds=3.0,
                            threads=2,
                        ),
                        progress=False,
                    )
                    wall = time.monotonic() - t
                rows[kind].append({"p50_ms": res.stats["p50"], "wall_s": wall, "loop_s": res.wall_s})
    finally:
        srv.close()
    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("p50_ms", "wall_s", "loop_s")}
        for k, v in rows.items()
    }
    return {
        "rounds": rounds,
        "local": med["local"],
        "ssh": med["ssh"],
        "p50_overhead_pct": round((med["ssh"]["p50_ms"] / med["local"]["p50_ms"] - 1) * 100, 2),
        "fixed_cost_s": round(
            (med["ssh"]["wall_s"] - med["ssh"]["loop_s"]) - (med["local"]["wall_s"] - med["local"]["loop_s"]),
            3,
        ),
        "all": rows,
    }


def synthetic_energy() -> list[dict]:
    """Known traces sampled every 100 ms (+-20 ms jitter); windows not aligned to samples."""
    rng = np.random.default_rng(0)
    out = []
    for name, power, energy in (
        ("ramp 5 W + 0.2 W/s", lambda t: 5 + 0.2 * t, lambda a, b: 5 * (b - a) + 0.1 * (b * b - a * a)),
        (
            "5 W + 1.5 W sine (0.7 Hz)",
            lambda t: 5 + 1.5 * np.sin(2 * np.pi * 0.7 * t),
            lambda a, b: (
                5 * (b - a)
                - 1.5 / (2 * np.pi * 0.7) * (np.cos(2 * np.pi * 0.7 * b) - np.cos(2 * np.pi * 0.7 * a))
            ),
        ),
        ("bursts 4/9 W, 2 s period", lambda t: np.where((t % 2) < 1, 4.0, 9.0), None),
    ):
        ts = np.cumsum(0.1 + rng.uniform(-0.02, 0.02, 700))
        samples = list(zip(ts, power(ts), strict=True))
        for t0, t1 in ((3.03, 13.07), (5.51, 35.49), (2.2, 62.9)):
            if energy is None:
                fine = np.linspace(t0, t1, 2_000_001)
                exact = float(np.trapezoid(power(fine), fine))
            else:
                exact = float(energy(t0, t1))
            est = energy_per_inference(samples, t0, t1, n=1000)
            out.append(
                {
                    "trace": name,
                    "window_s": round(t1 - t0, 2),
                    "error_pct": round((est.mj_per_inference * 1000 / 1e3 - exact) / exact * 100, 3),
                }
            )
    return out


def board_energy(work: Path, fp32: Path) -> list[dict]:
    """`edgekit bench` over SSH on the simulated Jetson: measured vs the ramp's exact energy."""
    folder = work / "jetson"
    env = make_fakeboard(folder, 6.0, 0.25)
    srv = SshServer(
        folder / "ssh",
        netns=netns_available(),
        path_prefix=str(folder / "bin"),
        env={"EDGEKIT_FAKEBOARD": env["EDGEKIT_FAKEBOARD"], "EDGEKIT_SYSFS_ROOT": env["EDGEKIT_SYSFS_ROOT"]},
    )
    srv.start()
    writer = start_sysfs_writer(folder, 0.005)
    art = get_backend("onnxruntime").build(
        fp32, BuildOptions(precision="fp32", threads=2, preprocess=SPEC, head="yolov5"), work / "board-art"
    )
    rows = []
    try:
        for sensor in ("tegrastats", "ina3221"):
            spec = {
                "name": "sim-jetson",
                "description": "simulated Jetson",
                "board": "jetson-xavier-nx",
                "backend": "onnxruntime",
                "precision": "fp32",
                "input_size": 160,
                "connection": {
                    "type": "ssh",
                    "host": srv.host,
                    "port": srv.port,
                    "user": srv.user,
                    "key_file": str(srv.key_file),
                    "known_hosts": str(srv.known_hosts),
                    "workdir": str(srv.folder / "work"),
                    "python": sys.executable,
                },
                "runtime": {
                    "threads": 2,
                    "warmup": 20,
                    "min_warmup_s": 1.0,
                    "iterations": 300,
                    "min_seconds": 10.0,
                },
                "power": {"sensor": sensor, "interval_ms": 100, "idle_s": 5.0},
            }
            (srv.folder / "work").mkdir(exist_ok=True)
            target = work / f"{sensor}.yaml"
            target.write_text(yaml.safe_dump(spec))
            run = bench_run(str(target), art.dir, out=work / "runs", progress=False)
            node = RunRecord.load(run / "record.json").node("bench")
            w, n = node.extra["window"], node.metrics["latency_ms"]["n"]
            exact = true_energy_j(load_ramp(folder), w["t0"], w["t1"]) * 1e3 / n
            got = node.metrics["energy_mj_per_inference"]
            rows.append(
                {
                    "sensor": sensor,
                    "window_s": round(w["t1"] - w["t0"], 2),
                    "samples": node.extra["power_samples_in_window"],
                    "mj_per_inference": round(got, 4),
                    "exact_mj": round(exact, 4),
                    "error_pct": round((got - exact) / exact * 100, 3),
                    "idle_w": node.metrics.get("idle_w"),
                }
            )
    finally:
        writer.stop()
        srv.close()
    return rows


def dead_link(work: Path, trials: int) -> dict:
    """Seconds from cutting the board's link to the agent's error (target default dead_after_s = 8)."""
    if not netns_available():
        return {"skipped": "network namespaces need root here"}
    srv = SshServer(work / "link", netns=True)
    srv.start()
    times = []
    ticker = "import sys, time\nwhile True:\n    print('.', file=sys.stderr, flush=True); time.sleep(0.5)"
    try:
        for _ in range(trials):
            with srv.transport(dead_after_s=8.0) as t:
                t.run(["true"])
                cut: dict[str, float] = {}

                def down(cut: dict[str, float] = cut) -> None:
                    cut["t"] = time.monotonic()
                    srv.link(False)

                threading.Timer(2.0, down).start()
                try:
                    t.run([sys.executable, "-c", ticker])
                except HostUnreachableError:
                    times.append(round(time.monotonic() - cut["t"], 2))
            srv.link(True)
            time.sleep(3)
    finally:
        srv.link(True)
        srv.close()
    return {"dead_after_s": 8.0, "detect_s": times, "max_s": max(times) if times else None}


def trt_form_map(work: Path, root: Path, fp32: Path, val) -> list[list]:
    """mAP in ONNX Runtime (this host) of today's QDQ vs the TensorRT form, per calibrator."""
    cs = import_set(root, "bench", root=work / "calib", from_dataset=True, split="calib", spec=SPEC).set
    form = host_qdq_form()
    rows = []
    for method in ("minmax", "entropy", "percentile"):
        ort_q = quantize_int8(
            fp32,
            work / f"ort-{method}.onnx",
            lambda: cs.arrays(),
            method=method,
            reduce_range=form.reduce_range,
            progress=False,
        )
        trt_q = quantize_trt_qdq(
            fp32,
            work / f"trt-{method}.onnx",
            lambda: cs.arrays(),
            method=method,
            reduce_range=form.reduce_range,
            progress=False,
        )
        a = device_eval(ort_q.path, "int8", val, iterations=50, min_seconds=0.0)
        b = device_eval(trt_q.path, "int8", val, iterations=50, min_seconds=0.0)
        rows.append(
            [
                method,
                form.weight_bits,
                a["map50_95"],
                b["map50_95"],
                round((b["map50_95"] - a["map50_95"]) * 100, 2),
                len(check_trt_qdq(ort_q.path)),
                len(check_trt_qdq(trt_q.path)),
            ]
        )
        print("  ", rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if not sshd_available():
        print("skipped: no OpenSSH server (make system-deps installs it)")
        return
    root, trained, val = setup()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = export_onnx(trained.model, SPEC.input_shape(), work / "fp32.onnx")
        ref = device_eval(fp32, "fp32", val, iterations=50, min_seconds=0.0)
        print("1. agent overhead (LocalTransport vs SSH to 127.0.0.1)", flush=True)
        overhead = agent_overhead(work, fp32, val, 1 if args.quick else 3)
        print("2. energy integration error", flush=True)
        synth = synthetic_energy()
        board = board_energy(work, fp32)
        print("3. dead link detection", flush=True)
        link = dead_link(work, 1 if args.quick else 3)
        print("4. TensorRT-form QDQ vs today's QDQ (ONNX Runtime on this host)", flush=True)
        maps = trt_form_map(work, root, fp32, val)
    print(
        f"\nagent overhead: p50 local {overhead['local']['p50_ms']:.3f} ms, over SSH "
        f"{overhead['ssh']['p50_ms']:.3f} ms -> {overhead['p50_overhead_pct']:+.2f} % (goal <= 3 %); "
        f"fixed cost of a bench over SSH {overhead['fixed_cost_s']:+.2f} s "
        f"(median of {overhead['rounds']} rounds)"
    )
    print(
        "\n"
        + table(
            ["trace", "window (s)", "error (%)"], [[r["trace"], r["window_s"], r["error_pct"]] for r in synth]
        )
    )
    print(
        "\n"
        + table(
            [
                "sensor (simulated Jetson, SSH)",
                "window (s)",
                "samples",
                "mJ/inf",
                "exact mJ/inf",
                "error (%)",
            ],
            [
                [
                    r["sensor"],
                    r["window_s"],
                    r["samples"],
                    r["mj_per_inference"],
                    r["exact_mj"],
                    r["error_pct"],
                ]
                for r in board
            ],
        )
    )  # noqa: E501
    print(f"\ndead link detected after {link.get('detect_s')} s (goal <= 10 s)")
    print(f"\nFP32 mAP@0.5:0.95 {ref['map50_95']:.4f}")
    print(
        table(
            [
                "calibrator",
                "weight bits",
                "today's QDQ",
                "TensorRT form",
                "Δ (pts)",
                "TRT violations: today",
                "TRT form",
            ],
            maps,
        )
    )  # noqa: E501
    path = save(
        "device",
        {
            "agent_overhead": overhead,
            "synthetic_energy": synth,
            "board_energy": board,
            "dead_link": link,
            "fp32_map50_95": ref["map50_95"],
            "trt_form_map": maps,
        },
    )
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
