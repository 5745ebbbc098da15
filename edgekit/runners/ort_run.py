"""Device-side ONNX Runtime runner: time an artifact and dump eval detections (stdlib + numpy + onnxruntime).

Never imports edgekit: it is copied to the device with ``detcore.py`` beside it and reads everything
from the artifact's ``artifact.json``. Progress goes to stderr as ``@progress <phase> <done> <total>``;
stdout carries exactly one JSON line with the results.

Usage:
    python ort_run.py --artifact DIR [--inputs X.npy] [--warmup 10] [--min-warmup-s 2] \
        [--iterations 1000] [--min-seconds 30] [--threads T] \
        [--eval-inputs E.npy --eval-out O.npz --conf 0.001]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import detcore  # noqa: E402
import numpy as np  # noqa: E402
import runcore  # noqa: E402

PROGRESS_STEPS = 20


class RunnerError(Exception):
    """An error the user can fix; printed as one line on stderr."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description="Time an ONNX Runtime artifact and dump eval detections.")
    p.add_argument("--artifact", required=True, help="artifact folder holding artifact.json")
    p.add_argument("--inputs", help=".npy input tensor for timing (default: seeded random)")
    p.add_argument("--warmup", type=int, default=10, help="minimum warm-up iterations")
    p.add_argument("--min-warmup-s", type=float, default=2.0, help="minimum warm-up seconds")
    p.add_argument("--iterations", type=int, default=1000, help="minimum timed iterations")
    p.add_argument("--min-seconds", type=float, default=30.0, help="minimum timed seconds")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: artifact.json)")
    p.add_argument("--eval-inputs", help=".npy stack (N, C, H, W) of preprocessed eval images")
    p.add_argument("--eval-out", help=".npz to write per-image candidate rows to (keys dets_<i>)")
    p.add_argument("--conf", type=float, default=0.001, help="score threshold for eval candidates")
    return p.parse_args(argv)


def sha256_file(path: str | Path) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_artifact(folder: str) -> dict:
    """Read artifact.json and verify the sha256 of every file it lists."""
    sidecar = Path(folder) / "artifact.json"
    if not sidecar.is_file():
        raise RunnerError(f"no artifact.json in {folder}")
    with open(sidecar) as fh:
        meta = json.load(fh)
    if meta.get("schema") != 1 or meta.get("backend") != "onnxruntime":
        raise RunnerError(f"{sidecar} is not a schema-1 onnxruntime artifact")
    for rel, expected in meta["sha256"].items():
        path = Path(folder) / rel
        if not path.is_file():
            raise RunnerError(f"artifact file {rel} is missing")
        if sha256_file(path) != expected:
            raise RunnerError(f"artifact file {rel} does not match its sha256 in artifact.json (tampered?)")
    return meta


def make_session(meta: dict, folder: str, threads: int | None):
    """Create a CPU InferenceSession with the requested intra-op threads (0 = ORT default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or 0)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    model = Path(folder) / meta["files"]["model"]
    return ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])


def bench_input(meta: dict, path: str | None) -> np.ndarray:
    """Load the timing input, or make a seeded random one of the artifact's input shape."""
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in meta["input"]["shape"]]
    if path is None:
        return np.random.default_rng(0).random(shape, dtype=np.float32)
    x = np.load(path).astype(meta["input"]["dtype"], copy=False)
    if list(x.shape) != shape:
        raise RunnerError(f"input {path} has shape {list(x.shape)}, the model expects {shape}")
    return x


class Progress:
    """Emit about PROGRESS_STEPS ``@progress`` lines per phase on stderr."""

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.last = -1

    def update(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` if it crossed the next step."""
        step = int(PROGRESS_STEPS * done / max(total, 1))
        if step != self.last or done >= total:
            self.last = step
            print(f"@progress {self.phase} {done} {max(total, done)}", file=sys.stderr, flush=True)


def timed_run(run, n_min: int, seconds_min: float, phase: str) -> tuple[list[float], float]:
    """Run ``run()`` at least ``n_min`` times and ``seconds_min`` seconds; return ms per call and wall s."""
    lat: list[float] = []
    progress = Progress(phase)
    clock = time.perf_counter
    start = clock()
    while len(lat) < n_min or clock() - start < seconds_min:
        t = clock()
        run()
        lat.append((clock() - t) * 1e3)
        elapsed = clock() - start
        estimate = max(n_min, math.ceil(seconds_min / max(elapsed / len(lat), 1e-9)))
        progress.update(len(lat), estimate)
    return lat, clock() - start


def run_eval(session, meta: dict, path: str, out: str, conf: float) -> int:
    """Run every eval tensor; save per-image candidate rows (K, 6) as ``dets_<i>`` in ``out``."""
    stack = np.load(path).astype(meta["input"]["dtype"], copy=False)
    name, head = meta["input"]["name"], meta["output"]["head"]
    progress = Progress("eval")
    dets = {}
    for i, x in enumerate(stack):
        output = session.run(None, {name: x[None]})[0]
        dets[f"dets_{i}"] = detcore.candidates(output, head, conf=conf)
        progress.update(i + 1, len(stack))
    tmp = out + ".tmp.npz"
    np.savez(tmp, **dets)
    Path(tmp).replace(out)
    return len(stack)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON line."""
    args = parse_args(argv)
    if bool(args.eval_inputs) != bool(args.eval_out):
        raise RunnerError("--eval-inputs and --eval-out go together")
    meta = load_artifact(args.artifact)
    threads = args.threads if args.threads is not None else meta.get("runtime", {}).get("threads")
    session = make_session(meta, args.artifact, threads)
    feed = {meta["input"]["name"]: bench_input(meta, args.inputs)}

    def once() -> None:
        session.run(None, feed)

    t = time.perf_counter()
    once()
    first_ms = (time.perf_counter() - t) * 1e3
    warmup_ms, _ = timed_run(once, args.warmup, args.min_warmup_s, "warmup")
    window_t0 = time.monotonic()
    latencies, wall = timed_run(once, args.iterations, args.min_seconds, "timed")
    window_t1 = time.monotonic()
    evaluated = None
    if args.eval_inputs:
        n = run_eval(session, meta, args.eval_inputs, args.eval_out, args.conf)
        evaluated = {"images": n, "file": Path(args.eval_out).name}
    import onnxruntime as ort

    result = {
        "runner": "ort_run",
        "runtime": "onnxruntime",
        "runtime_version": ort.__version__,
        "threads": int(threads or 0),
        "first_ms": round(first_ms, 4),
        "warmup_ms": [round(v, 4) for v in warmup_ms],
        "latencies_ms": [round(v, 4) for v in latencies],
        "wall_s": wall,
        "window": {"clock": "monotonic", "t0": window_t0, "t1": window_t1},
        "eval": evaluated,
        "device": runcore.device_facts(),
    }
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RunnerError as exc:
        print(f"ort_run: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # one clear line instead of a traceback on a device console
        print(f"ort_run: error: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}", file=sys.stderr)
        sys.exit(1)
