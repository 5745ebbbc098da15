"""The device-side core every runner shares (stdlib + numpy: it is pushed to the board beside the runner).

Two parts: device facts, and the runner loop (:func:`run`) that each runtime's small runner file
drives with its own ``Runtime`` class (load + infer).

The CPU's instruction set is a device fact like its clock or its temperature: INT8 kernels differ by
it (on x86 without VNNI, ONNX Runtime's u8s8 kernels multiply with ``vpmaddubsw``, whose pairwise
int16 sums saturate; VNNI's ``vpdpbusd`` and Arm's ``sdot``/``udot`` accumulate in int32), so the
runner reports it with every measurement and the host quantizes for it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

#: The flags that decide how INT8 (and FP16) kernels run, as Linux names them in /proc/cpuinfo.
X86_FEATURES = (
    "sse4_1",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
)
ARM_FEATURES = ("asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "neon", "vfpv4")


#: ARM's own cores by MIDR part number (implementer 0x41): an arm64 kernel's cpuinfo names no model.
ARM_CORES = {
    0xD03: "Cortex-A53", 0xD04: "Cortex-A35", 0xD05: "Cortex-A55", 0xD07: "Cortex-A57", 0xD08: "Cortex-A72",
    0xD09: "Cortex-A73", 0xD0A: "Cortex-A75", 0xD0B: "Cortex-A76", 0xD0C: "Neoverse-N1", 0xD0D: "Cortex-A77",
    0xD41: "Cortex-A78", 0xD44: "Cortex-X1", 0xD46: "Cortex-A510", 0xD47: "Cortex-A710", 0xD4B: "Cortex-A78C",
}  # fmt: skip


def _cpuinfo_flags(text: str) -> tuple[set[str], str]:
    r"""Return the feature flags and the model name found in a /proc/cpuinfo text.

    An arm64 cpuinfo has no model name; its first core's implementer and part name it instead:

    >>> _cpuinfo_flags("Features\t: fp asimd\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n")[1]
    'Cortex-A72'
    """
    flags: set[str] = set()
    model, implementer, part = "", "", ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key == "cpu implementer" and not implementer:
            implementer = value.strip()
        elif key == "cpu part" and not part:
            part = value.strip()
    if not model and part:
        try:
            core = ARM_CORES.get(int(part, 16)) if implementer == "0x41" else None
        except ValueError:
            core = None
        model = core or f"ARM implementer {implementer} part {part}"
    return flags, model


def int8_dot(arch: str, features: list[str]) -> str:
    """Name the instruction an INT8 dot product runs on: ``vnni``, ``vpmaddubsw``, ``sdot``, ``neon``...

    ``unknown`` when the architecture or its flags cannot tell.
    """
    isa = set(features)
    if arch in ("x86_64", "amd64", "i686", "x86"):
        if isa & {"avx512_vnni", "avx_vnni", "amx_int8"}:
            return "vnni"
        if isa & {"avx2", "avx512bw"}:
            return "vpmaddubsw"
        return "sse" if isa else "unknown"
    if arch.startswith(("aarch64", "arm")):
        if "i8mm" in isa:
            return "smmla"
        if "asimddp" in isa:
            return "sdot"
        return "neon" if isa else "unknown"
    return "unknown"


def cpu_features(cpuinfo_path: str | None = None, arch: str | None = None) -> dict:
    """Describe this CPU: ``{"arch", "model", "features": [...], "int8_dot"}``.

    ``features`` holds only the flags in :data:`X86_FEATURES` / :data:`ARM_FEATURES`; it is empty
    (and ``int8_dot`` is ``"unknown"``) where the OS does not expose ``/proc/cpuinfo``. Under a
    user-mode emulator (``qemu-x86_64 -cpu Haswell``), which passes the host's /proc/cpuinfo
    through, ``EDGEKIT_CPUINFO`` names a cpuinfo file describing the emulated CPU instead.
    """
    cpuinfo_path = cpuinfo_path or os.environ.get("EDGEKIT_CPUINFO") or "/proc/cpuinfo"
    try:
        with open(cpuinfo_path) as fh:
            text = fh.read()
    except OSError:
        text = ""
    described = describe_cpu(text, arch or platform.machine())
    return {**described, "model": described["model"] or platform.processor()}


def describe_cpu(cpuinfo: str, arch: str) -> dict:
    r"""``{"arch", "model", "features", "int8_dot"}`` of a /proc/cpuinfo text on a CPU of ``arch``.

    >>> describe_cpu("Features\t: fp asimd asimddp\n", "aarch64")["int8_dot"]
    'sdot'
    """
    arch = arch.strip().lower()
    flags, model = _cpuinfo_flags(cpuinfo)
    known = X86_FEATURES if arch in ("x86_64", "amd64", "i686", "x86") else ARM_FEATURES
    features = [f for f in known if f in flags]
    return {"arch": arch, "model": model, "features": features, "int8_dot": int8_dot(arch, features)}


def cpu_governors(root: str = "/sys/devices/system/cpu") -> dict[str, str]:
    """``{cpuN: governor}`` from cpufreq sysfs (empty where the OS has none, e.g. most VMs)."""
    base = Path(root)
    cpus = sorted(p for p in base.iterdir() if p.name[3:].isdigit()) if base.is_dir() else []
    out = {}
    for cpu in cpus:
        path = cpu / "cpufreq" / "scaling_governor"
        if cpu.name.startswith("cpu") and path.is_file():
            out[cpu.name] = path.read_text().strip()
    return out


def pin_cpus(asked: list[int] | None) -> dict | None:
    """Pin this process to the ``asked`` cores that exist (e.g. the RK3588's A76 cores 4-7).

    Returns ``{"asked", "used"}``, or None when nothing was asked. Cores the device lacks are dropped
    (a board's preset run on a smaller host), and none left means no pinning, which the record shows.
    """
    if not asked:
        return None
    if not hasattr(os, "sched_setaffinity"):
        return {"asked": list(asked), "used": None, "note": "this OS cannot pin threads"}
    present = os.sched_getaffinity(0)
    used = sorted(set(asked) & present)
    if used:
        os.sched_setaffinity(0, used)
    return {"asked": list(asked), "used": used or None}


def device_facts() -> dict:
    """Platform facts recorded with every measurement (CPU instruction set, governors, affinity)."""
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "cpu": cpu_features(),
        "governors": cpu_governors(),
        "affinity": affinity,
    }


# -- the shared runner loop ----------------------------------------------------------------------------
# Every runner is this loop plus a small ``Runtime`` class (load + infer + its version): arguments, the
# artifact's sha256 check, the input's dtype conversion, warm-up and timed loop, progress lines on
# stderr, eval outputs and device facts, and exactly one JSON line on stdout.

PROGRESS_STEPS = 20


class RunnerError(Exception):
    """An error the user can fix; printed as one line on stderr."""


def parse_args(argv: list[str] | None = None, description: str = "Time an artifact.") -> argparse.Namespace:
    """Parse the runner command line (the same for every runtime)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--artifact", required=True, help="artifact folder holding artifact.json")
    p.add_argument("--inputs", help=".npy float input tensor for timing (default: seeded random)")
    p.add_argument("--warmup", type=int, default=10, help="minimum warm-up iterations")
    p.add_argument("--min-warmup-s", type=float, default=2.0, help="minimum warm-up seconds")
    p.add_argument("--iterations", type=int, default=1000, help="minimum timed iterations")
    p.add_argument("--min-seconds", type=float, default=30.0, help="minimum timed seconds")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: artifact.json)")
    p.add_argument("--cpus", help="comma-separated cores to pin to (e.g. 4,5,6,7 = an RK3588's A76 cores)")
    p.add_argument("--eval-inputs", help=".npy stack (N, C, H, W) of preprocessed float eval images")
    p.add_argument("--eval-out", help=".npz to write per-image candidate rows to (keys dets_<i>)")
    p.add_argument("--conf", type=float, default=0.001, help="score threshold for eval candidates")
    p.add_argument(
        "--output-out", help=".npy to write the float output on the timing input to (correctness guard)"
    )
    p.add_argument(
        "--max-warmup-s",
        type=float,
        default=None,
        help="warm up past the minimum until latency settles, at most this long (default 5x --min-warmup-s)",
    )
    return p.parse_args(argv)


def sha256_file(path: str | Path) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_artifact(folder: str, backend: str) -> dict:
    """Read artifact.json, check it is ``backend``'s, and verify the sha256 of every file it lists."""
    sidecar = Path(folder) / "artifact.json"
    if not sidecar.is_file():
        raise RunnerError(f"no artifact.json in {folder}")
    with open(sidecar) as fh:
        meta = json.load(fh)
    if meta.get("schema") != 1 or meta.get("backend") != backend:
        raise RunnerError(f"{sidecar} is not a schema-1 {backend} artifact (it says {meta.get('backend')})")
    for rel, expected in meta["sha256"].items():
        path = Path(folder) / rel
        if not path.is_file():
            raise RunnerError(f"artifact file {rel} is missing")
        if sha256_file(path) != expected:
            raise RunnerError(f"artifact file {rel} does not match its sha256 in artifact.json (tampered?)")
    return meta


def to_model_input(x: np.ndarray, meta: dict) -> np.ndarray:
    """Turn a preprocessed float input into what the model takes (an int8 input is quantized).

    A model with an integer input carries ``input.quantization = {scale, zero_point}`` in its
    sidecar: ``q = clip(round(x / scale) + zero_point)`` in the dtype's range, never a bare cast.
    """
    dtype = np.dtype(meta["input"]["dtype"])
    if dtype.kind == "f":
        return np.ascontiguousarray(x, dtype=dtype)
    quant = meta["input"].get("quantization")
    if not quant:
        raise RunnerError(f"the model takes {dtype} input but artifact.json gives no scale / zero point")
    info = np.iinfo(dtype)
    q = np.round(x / float(quant["scale"])) + int(quant["zero_point"])
    return np.clip(q, info.min, info.max).astype(dtype)


def to_float_output(y: np.ndarray, meta: dict) -> np.ndarray:
    """Dequantize an integer model output with the sidecar's ``output.quantization``."""
    y = np.asarray(y)
    if y.dtype.kind == "f":
        return y.astype(np.float32, copy=False)
    quant = meta["output"].get("quantization")
    if not quant:
        raise RunnerError(f"the model gives {y.dtype} output but artifact.json gives no scale / zero point")
    return ((y.astype(np.float32) - int(quant["zero_point"])) * float(quant["scale"])).astype(np.float32)


def bench_input(meta: dict, path: str | None) -> np.ndarray:
    """Load the float timing input, or make a seeded random one of the artifact's input shape."""
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in meta["input"]["shape"]]
    if path is None:
        return np.random.default_rng(0).random(shape, dtype=np.float32)
    x = np.load(path).astype(np.float32, copy=False)
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


SETTLE_WINDOW = 20
SETTLE_CHANGE = 0.02


def settle(run, lat: list[float], max_seconds: float) -> tuple[list[float], bool]:
    """Keep running until the median of the last 20 latencies moves < 2 % between two windows.

    Returns the extra latencies and whether latency settled before ``max_seconds`` (research §5.2).
    """
    extra: list[float] = []
    clock = time.perf_counter
    start = clock()
    while True:
        window = (lat + extra)[-2 * SETTLE_WINDOW :]
        if len(window) == 2 * SETTLE_WINDOW:
            before = statistics.median(window[:SETTLE_WINDOW])
            now = statistics.median(window[SETTLE_WINDOW:])
            if before > 0 and abs(now - before) / before < SETTLE_CHANGE:
                return extra, True
        if clock() - start >= max_seconds:
            return extra, False
        t = clock()
        run()
        extra.append((clock() - t) * 1e3)


def run_eval(runtime, meta: dict, path: str, out: str, conf: float) -> int:
    """Run every eval tensor; save per-image candidate rows (K, 6) as ``dets_<i>`` in ``out``."""
    import detcore

    stack = np.load(path).astype(np.float32, copy=False)
    head = meta["output"]["head"]
    progress = Progress("eval")
    dets = {}
    for i, x in enumerate(stack):
        output = to_float_output(runtime.infer(to_model_input(x[None], meta)), meta)
        dets[f"dets_{i}"] = detcore.candidates(output, head, conf=conf)
        progress.update(i + 1, len(stack))
    tmp = out + ".tmp.npz"
    np.savez(tmp, **dets)
    Path(tmp).replace(out)
    return len(stack)


def save_npy(path: str, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` whole (temp file, then rename)."""
    tmp = path + ".tmp.npy"
    np.save(tmp, np.ascontiguousarray(array))
    Path(tmp).replace(path)


#: Keys of every runner's JSON line; a runtime's ``report()`` adds its own beside them.
RESULT_KEYS = frozenset(
    ("runner", "runtime", "runtime_version", "threads", "first_ms", "warmup_ms", "warmup_settled",
     "latencies_ms", "wall_s", "window", "eval", "pinned", "device")
)  # fmt: skip


def run(runtime_cls, runner: str, argv: list[str] | None = None) -> int:
    """The whole runner: load, warm up, time, evaluate, print one JSON line.

    ``runtime_cls(meta, folder, threads)`` loads the model; its ``infer(x)`` returns the first output
    (batch dim kept) and its ``name`` / ``version`` / ``threads`` describe the runtime.
    """
    args = parse_args(argv, f"Time a {runtime_cls.name} artifact and dump eval detections.")
    if bool(args.eval_inputs) != bool(args.eval_out):
        raise RunnerError("--eval-inputs and --eval-out go together")
    meta = load_artifact(args.artifact, getattr(runtime_cls, "backend", runtime_cls.name))
    pinned = pin_cpus([int(c) for c in args.cpus.split(",")] if args.cpus else None)
    threads = args.threads if args.threads is not None else meta.get("runtime", {}).get("threads")
    runtime = runtime_cls(meta, args.artifact, threads)
    x = to_model_input(bench_input(meta, args.inputs), meta)

    def once() -> None:
        runtime.infer(x)

    t = time.perf_counter()
    first = runtime.infer(x)
    first_ms = (time.perf_counter() - t) * 1e3
    if args.output_out:
        save_npy(args.output_out, to_float_output(first, meta))
    warmup_ms, _ = timed_run(once, args.warmup, args.min_warmup_s, "warmup")
    limit = args.max_warmup_s if args.max_warmup_s is not None else 5 * args.min_warmup_s
    more, settled = settle(once, warmup_ms, limit)
    warmup_ms += more
    window_t0 = time.monotonic()
    latencies, wall = timed_run(once, args.iterations, args.min_seconds, "timed")
    window_t1 = time.monotonic()
    evaluated = None
    if args.eval_inputs:
        n = run_eval(runtime, meta, args.eval_inputs, args.eval_out, args.conf)
        evaluated = {"images": n, "file": Path(args.eval_out).name}
    result = {
        "runner": runner,
        "runtime": runtime.name,
        "runtime_version": runtime.version,
        "threads": int(runtime.threads or 0),
        "first_ms": round(first_ms, 4),
        "warmup_ms": [round(v, 4) for v in warmup_ms],
        "warmup_settled": settled,
        "latencies_ms": [round(v, 4) for v in latencies],
        "wall_s": wall,
        "window": {"clock": "monotonic", "t0": window_t0, "t1": window_t1},
        "eval": evaluated,
        "pinned": pinned,
        "device": device_facts(),
    }
    if hasattr(runtime, "report"):  # a runtime's own figures (e.g. an MCU's cycle counts)
        result.update(runtime.report())
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


def main(runtime_cls, runner: str) -> None:
    """Entry point of a runner file: :func:`run`, with one clear error line instead of a traceback."""
    try:
        sys.exit(run(runtime_cls, runner))
    except RunnerError as exc:
        print(f"{runner}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # one clear line instead of a traceback on a device console
        print(f"{runner}: error: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}", file=sys.stderr)
        sys.exit(1)
