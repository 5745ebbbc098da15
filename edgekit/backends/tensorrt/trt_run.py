"""Device-side TensorRT runner: build the engine on the Jetson, check it, time it, run the eval set.

Never imports edgekit: copied to the board with ``runcore.py``, ``detcore.py`` and ``trtcore.py``
beside it. Every step drives ``trtexec`` (JetPack ships it at /usr/src/tensorrt/bin/trtexec):

- ``--build --engine-out E``: ``trtexec --onnx=<staged model.onnx> --saveEngine=E`` with the flags the
  artifact asks for (``--int8 --fp16`` for a TensorRT-form QDQ model on 8.x/10.x); prints one JSON line
  with the TensorRT version and build time;
- ``--check``: load the engine and run one inference (the post-build load check, on the device);
- otherwise (the shared runner command line): the output on ``--inputs`` (``--output-out``, for the
  correctness guard), the timed run (``--exportTimes`` gives per-query latencies; the window is anchored
  on this process's monotonic clock at trtexec's "Starting inference" line plus the warm-up), and
  each eval image through ``--loadInputs``/``--exportOutput``.

Without trtexec it prints ``trt_run: error: <what to install>`` and exits 3: never a number.

Usage:
    python trt_run.py --artifact DIR --build --engine-out DIR/model.engine
    python trt_run.py --artifact DIR --check
    python trt_run.py --artifact DIR [--inputs X.npy] [--warmup 10] [--min-warmup-s 2] \
        [--iterations 1000] [--min-seconds 30] [--eval-inputs E.npy --eval-out O.npz] [--output-out G.npy]
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# On a board the shared cores (runcore.py, detcore.py) are pushed beside this file; in a checkout they are
# in edgekit/runners/.
sys.path[:0] = [str(_HERE)] + (
    [] if (_HERE / "runcore.py").is_file() else [str(_HERE.parents[1] / "runners")]
)

import numpy as np  # noqa: E402
import runcore  # noqa: E402
import trtcore  # noqa: E402

MISSING_EXIT = 3


class TrtMissing(runcore.RunnerError):
    """TensorRT (trtexec) is not on this device."""


def trtexec() -> str:
    """The trtexec executable, or :class:`TrtMissing` naming what to install."""
    found = trtcore.find_trtexec()
    if not found:
        raise TrtMissing(trtcore.TRT_MISSING)
    return found


def run_trtexec(argv: list[str], timeout: float | None = None) -> tuple[str, dict[str, float]]:
    """Run trtexec; return its stdout and the monotonic arrival time of marker lines.

    Raises:
        RunnerError: Non-zero exit (with trtexec's error lines).
    """
    marks: dict[str, float] = {}
    lines: list[str] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if "Starting inference" in line and "start" not in marks:
            marks["start"] = time.monotonic()
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
            raise runcore.RunnerError(f"trtexec did not finish within {timeout:g} s")
    proc.wait()
    text = "".join(lines)
    if proc.returncode != 0:
        parsed = trtcore.parse_trtexec(text)
        errors = parsed.get("errors") or [ln for ln in lines[-5:] if ln.strip()]
        raise runcore.RunnerError(
            f"trtexec exited {proc.returncode}: {' | '.join(e.strip() for e in errors)[:600]}"
        )
    return text, marks


def probe_version(exe: str) -> str | None:
    """TensorRT's version from trtexec's banner (``&&&& RUNNING TensorRT.trtexec [TensorRT v8502]``)."""
    try:
        res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return trtcore.parse_trtexec(res.stdout + res.stderr).get("version")


def version_parts(version: str | None) -> tuple[int | None, int | None]:
    """``"8.5.2"`` -> ``(8, 5)``."""
    if not version:
        return None, None
    parts = version.split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else None


def engine_path(folder: str, meta: dict) -> str:
    """The built engine inside the artifact folder."""
    if "model" not in meta["files"]:
        raise runcore.RunnerError("this artifact is only staged: build the engine first (trt_run.py --build)")
    return str(Path(folder) / meta["files"]["model"])


def build(args, meta: dict) -> dict:
    """Build the engine from the staged ONNX; return the build facts."""
    exe = trtexec()
    flags = meta.get("device_build", {}).get("precision_flags", [])
    onnx = str(Path(args.artifact) / meta["files"]["source"])
    cache = str(Path(args.engine_out).with_suffix(".timing.cache"))
    major, minor = version_parts(probe_version(exe))
    int8, fp16 = "int8" in flags, "fp16" in flags and (major or 8) < 11
    argv = trtcore.build_argv(
        exe,
        onnx,
        args.engine_out,
        int8=int8,
        fp16=fp16,
        timing_cache=cache,
        version_major=major,
        version_minor=minor,
    )
    start = time.monotonic()
    text, _ = run_trtexec(argv)
    parsed = trtcore.parse_trtexec(text)
    if not Path(args.engine_out).is_file() or Path(args.engine_out).stat().st_size == 0:
        raise runcore.RunnerError("trtexec reported success but wrote no engine")
    Path(cache).unlink(missing_ok=True)
    return {
        "mode": "build",
        "engine": Path(args.engine_out).name,
        "runtime_version": parsed.get("version"),
        "seconds": round(time.monotonic() - start, 3),
        "argv": argv[1:],
        "warnings": parsed.get("warnings", []),
        "device": runcore.device_facts(),
    }


def infer_once(exe: str, engine: str, meta: dict, x: np.ndarray, tmp: str) -> tuple[np.ndarray, dict]:
    """One inference of ``x`` through trtexec; return the first output and trtexec's summary."""
    raw = str(Path(tmp) / "input.bin")
    out = str(Path(tmp) / "output.json")
    np.ascontiguousarray(x, dtype=np.float32).tofile(raw)
    name = meta["input"]["name"]
    argv = [exe, f"--loadEngine={engine}", f"--loadInputs={name}:{raw}", f"--exportOutput={out}"]
    argv += ["--iterations=1", "--warmUp=0", "--duration=0"]
    text, _ = run_trtexec(argv)
    with open(out) as fh:
        outputs = json.load(fh)
    first = next((o for o in outputs if o.get("name") == meta["output"]["name"]), outputs[0])
    dims = [int(d) for d in str(first["dimensions"]).split("x")]
    return np.asarray(first["values"], dtype=np.float32).reshape(dims), trtcore.parse_trtexec(text)


def check(args, meta: dict) -> dict:
    """Load the engine and run one inference on the device."""
    exe = trtexec()
    x = runcore.bench_input(meta, None)
    with tempfile.TemporaryDirectory(prefix="trt-check-") as tmp:
        y, parsed = infer_once(exe, engine_path(args.artifact, meta), meta, x, tmp)
    return {
        "mode": "check",
        "output_shape": list(y.shape),
        "runtime_version": parsed.get("version"),
        "passed": True,
    }


def split_warmup(start_ms: list[float], n_min: int, seconds_min: float) -> int:
    """Index of the first timed query: after at least ``n_min`` queries and ``seconds_min`` seconds."""
    k = min(n_min, len(start_ms))
    while k < len(start_ms) and start_ms[k] - start_ms[0] < seconds_min * 1e3:
        k += 1
    return k


def timed(exe: str, engine: str, args, tmp: str) -> dict:
    """One trtexec run (no trtexec warm-up): its first queries are the warm-up, the rest the timed loop.

    Per-query times come from ``--exportTimes`` (relative to trtexec's start of inference); the window is
    put on this process's monotonic clock at the arrival of trtexec's "Starting inference" line.
    """
    times = str(Path(tmp) / "times.json")
    major, minor = version_parts(probe_version(exe))
    argv = trtcore.time_argv(
        exe,
        engine,
        version_major=major,
        version_minor=minor,
        warmup_ms=0,
        duration_s=max(1, math.ceil(args.min_warmup_s + args.min_seconds)),
        iterations=args.warmup + args.iterations,
        export_times=times,
        avg_runs=10,
        percentiles=(50, 90, 95, 99),
    )
    print("@progress timed 0 1", file=sys.stderr, flush=True)
    text, marks = run_trtexec(argv)
    print("@progress timed 1 1", file=sys.stderr, flush=True)
    parsed = trtcore.parse_trtexec(text)
    with open(times) as fh:
        per_query = trtcore.parse_export_times(fh.read())
    start, lat = per_query["start_ms"], per_query["latency_ms"]
    k = split_warmup(start, args.warmup, args.min_warmup_s)
    if k >= len(lat):
        raise runcore.RunnerError(f"trtexec ran {len(lat)} queries, all of them inside the warm-up")
    first, last = start[k], start[-1] + lat[-1]
    anchor = marks.get("start", time.monotonic() - last / 1e3)
    window = {
        "clock": "monotonic",
        "t0": anchor + first / 1e3,
        "t1": anchor + last / 1e3,
        "anchor": "trtexec's 'Starting inference' line, plus --exportTimes offsets",
    }
    return {
        "warmup": lat[:k],
        "latencies": lat[k:],
        "wall": (last - first) / 1e3,
        "window": window,
        "trtexec": parsed,
        "drift": trtcore.drift(start[k:], lat[k:]),
    }


def run(argv: list[str] | None = None) -> int:
    """Build, check, or time + evaluate; print exactly one JSON line."""
    extra = [a for a in (argv if argv is not None else sys.argv[1:])]
    mode_build, mode_check = "--build" in extra, "--check" in extra
    engine_out = None
    if "--engine-out" in extra:
        engine_out = extra[extra.index("--engine-out") + 1]
        del extra[extra.index("--engine-out") : extra.index("--engine-out") + 2]
    extra = [a for a in extra if a not in ("--build", "--check")]
    args = runcore.parse_args(extra, "Build, check or time a TensorRT artifact with trtexec.")
    args.engine_out = engine_out
    meta = runcore.load_artifact(args.artifact, "tensorrt")
    if mode_build:
        if not engine_out:
            raise runcore.RunnerError("--build needs --engine-out PATH")
        result = build(args, meta)
    elif mode_check:
        result = check(args, meta)
    else:
        result = measure(args, meta)
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


def measure(args, meta: dict) -> dict:
    """Guard output, timed run and eval set, in the shared runner's JSON form."""
    import detcore

    exe = trtexec()
    engine = engine_path(args.artifact, meta)
    x = runcore.bench_input(meta, args.inputs)
    with tempfile.TemporaryDirectory(prefix="trt-run-") as tmp:
        t = time.perf_counter()
        y, parsed = infer_once(exe, engine, meta, x, tmp)
        first_ms = (time.perf_counter() - t) * 1e3  # includes engine deserialisation: a cold start
        if args.output_out:
            runcore.save_npy(args.output_out, y)
        run_ = timed(exe, engine, args, tmp)
        evaluated = None
        if args.eval_inputs:
            stack = np.load(args.eval_inputs).astype(np.float32, copy=False)
            progress, dets = runcore.Progress("eval"), {}
            for i, image in enumerate(stack):
                out, _ = infer_once(exe, engine, meta, image[None], tmp)
                dets[f"dets_{i}"] = detcore.candidates(out, meta["output"]["head"], conf=args.conf)
                progress.update(i + 1, len(stack))
            tmp_out = args.eval_out + ".tmp.npz"
            np.savez(tmp_out, **dets)
            Path(tmp_out).replace(args.eval_out)
            evaluated = {"images": len(stack), "file": Path(args.eval_out).name}
    return {
        "runner": "trt_run",
        "runtime": "tensorrt",
        "runtime_version": parsed.get("version") or run_["trtexec"].get("version") or "unknown",
        "threads": 0,
        "first_ms": round(first_ms, 4),
        "warmup_ms": [round(v, 4) for v in run_["warmup"]],
        "warmup_settled": None,
        "latencies_ms": [round(v, 4) for v in run_["latencies"]],
        "wall_s": run_["wall"],
        "window": run_["window"],
        "eval": evaluated,
        "pinned": None,
        "trtexec": {
            "gpu_compute_time": run_["trtexec"]["metrics"].get("gpu_compute_time"),
            "throughput_qps": run_["trtexec"].get("throughput_qps"),
            "gpu_compute_cov_percent": run_["trtexec"].get("gpu_compute_cov_percent"),
            "warnings": run_["trtexec"].get("warnings"),
            "drift": run_["drift"],
        },
        "device": runcore.device_facts(),
    }


def main() -> None:
    """Entry point: one clear error line (exit 3 when TensorRT is missing) instead of a traceback."""
    try:
        sys.exit(run())
    except TrtMissing as exc:
        print(f"trt_run: error: {exc}", file=sys.stderr)
        sys.exit(MISSING_EXIT)
    except runcore.RunnerError as exc:
        print(f"trt_run: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # one line on a device console
        print(f"trt_run: error: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
