"""trtexec on the device: find it, build its argv for the TensorRT version at hand, parse what it prints.

STDLIB ONLY: this file is copied to the Jetson beside the other runner files and must not import numpy or
edgekit; the host imports the same file (``from edgekit.backends.tensorrt import trtcore``) to parse
recorded output.

Formats (NVIDIA/TensorRT ``samples/common/sampleReporting.cpp``, ``sampleOptions.cpp``, 8.0 ... 11.x):

* log lines are ``[MM/DD/YYYY-HH:MM:SS] [I] ...`` (the date and the severity tag may be missing in
  copied logs); summary lines are ``<Metric>: min = X ms, max = X ms, mean = X ms, median = X ms,
  percentile(P%) = X ms, ...`` with percentiles 90/95/99 from 8.5 on and only 99 before;
  ``End-to-End Host Latency`` exists only up to 8.2;
* the last line is ``&&&& PASSED TensorRT.trtexec [TensorRT v8502] # trtexec ...`` (``v8502`` = 8.5.2,
  ``v100300`` = 10.3.0);
* ``--exportTimes`` writes a JSON list with one object per timed query (``startEnqMs ... latencyMs``).

Flags differ by major version: 8.x ``--buildOnly``, ``--workspace`` (< 8.4) / ``--memPoolSize`` (8.4+);
10.x ``--skipInference`` (``--int8``/``--fp16`` deprecated but accepted); 11.x builds strongly typed
networks only (no ``--int8``/``--fp16``/``--calib``: the QDQ model carries the precision) and flips the
timing defaults (data transfers off, spin wait and CUDA graphs on), which :func:`time_argv` undoes so a
TensorRT 11 "Latency" means what an 8.5 one does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

#: Where JetPack's TensorRT package puts trtexec (it is not on PATH by default).
JETSON_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
TRT_MISSING = (
    f"trtexec not found on PATH or at {JETSON_TRTEXEC}. On a Jetson it comes with JetPack's TensorRT: "
    "`sudo apt install tensorrt` (or the whole SDK: `sudo apt install nvidia-jetpack`), which puts it at "
    f"{JETSON_TRTEXEC}; elsewhere install TensorRT and put its bin/ folder on PATH."
)
#: Summary metrics trtexec prints, as the keys :func:`parse_trtexec` uses.
METRICS = {
    "Latency": "latency",
    "End-to-End Host Latency": "end_to_end_host_latency",
    "Enqueue Time": "enqueue_time",
    "H2D Latency": "h2d_latency",
    "GPU Compute Time": "gpu_compute_time",
    "D2H Latency": "d2h_latency",
}
#: ``--exportTimes`` keys read per query, and the names :func:`parse_export_times` gives them.
EXPORT_KEYS = {
    "startEnqMs": "start_ms",
    "startComputeMs": "compute_start_ms",
    "latencyMs": "latency_ms",
    "computeMs": "compute_ms",
    "h2dMs": "h2d_ms",
    "d2hMs": "d2h_ms",
}
DEFAULT_MAJOR = 8  # JetPack 5.1 ships TensorRT 8.5.2; with no version given, flags valid on 8.5 and 10.x

_PREFIX = r"^(?:\[\d{2}/\d{2}/\d{4}-\d{2}:\d{2}:\d{2}\]\s*)?(?:\[([IWEVF])\]\s*)?"
_METRIC_LINE = re.compile(_PREFIX + r"(" + "|".join(re.escape(m) for m in METRICS) + r"): (.*)$")
_STAT = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\)) = ([-+\d.eE]+|nan|inf) ms")
_NUMBER = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_THROUGHPUT = re.compile(r"Throughput: " + _NUMBER + r" qps")
_WARMUP = re.compile(r"Warmup completed (\d+) queries over " + _NUMBER + r" ms")
_TRACE = re.compile(r"Timing trace has (\d+) queries over " + _NUMBER + r" s")
_WALLTIME = re.compile(r"Total Host Walltime: " + _NUMBER + r" s")
_GPU_TOTAL = re.compile(r"Total GPU Compute Time: " + _NUMBER + r" s")
_COV = re.compile(r"coefficient of variance = " + _NUMBER + r" ?%")
_BANNER = re.compile(r"&&&& (\w+) TensorRT\.trtexec\s*(?:\[TensorRT v(\d+)\])?")
_VERSION_LINE = re.compile(r"TensorRT version: (\d+\.\d+\.\d+)")


def find_trtexec(env: Mapping[str, str] = os.environ, fallback: str = JETSON_TRTEXEC) -> str | None:
    """Locate trtexec: ``PATH`` first, then JetPack's fixed location.

    Args:
        env: Environment whose ``PATH`` is searched.
        fallback: Path tried when ``PATH`` has none (JetPack's ``/usr/src/tensorrt/bin/trtexec``).

    Returns:
        The executable's path, or None (then show :data:`TRT_MISSING`).
    """
    found = shutil.which("trtexec", path=env.get("PATH", os.defpath))
    if found:
        return found
    if Path(fallback).is_file() and os.access(fallback, os.X_OK):
        return fallback
    return None


def version_from_tag(tag: str | int) -> str:
    """Turn trtexec's banner number into a dotted version: ``8502`` -> ``8.5.2``, ``100300`` -> ``10.3.0``.

    TensorRT < 10 encodes ``M*1000 + m*100 + p``; 10 and later ``M*10000 + m*100 + p``.

    Raises:
        ValueError: ``tag`` is not a number.
    """
    n = int(tag)
    if n >= 100000:
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"


# --- parsing trtexec's stdout --------------------------------------------------------------------------


def parse_trtexec(text: str | bytes) -> dict:
    """Parse trtexec's stdout (TensorRT 8.0 ... 10.x, tolerant of 11.x).

    Unknown or truncated lines are skipped, never fatal: an empty or garbled log gives Nones and empty lists.

    Args:
        text: trtexec's stdout (and stderr, if merged).

    Returns:
        ``{"version", "version_major", "status" (PASSED/FAILED/None), "throughput_qps", "metrics"
        {latency, end_to_end_host_latency, enqueue_time, h2d_latency, gpu_compute_time, d2h_latency: {min,
        max, mean, median, percentiles {90: ...}} (only those printed)}, "warmup" {queries, ms},
        "trace" {queries, seconds}, "total_host_walltime_s", "total_gpu_compute_time_s",
        "gpu_compute_cov_percent", "warnings" (the stability notes), "errors" ([E]/[F] lines)}``.

    Example:
        >>> parse_trtexec("[I] Throughput: 27207 qps")["throughput_qps"]
        27207.0
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out = _empty_result()
    for raw in text.splitlines():
        _parse_line(raw.rstrip("\r"), out)
    return out


def _empty_result() -> dict:
    return {
        "version": None,
        "version_major": None,
        "status": None,
        "throughput_qps": None,
        "metrics": {},
        "warmup": None,
        "trace": None,
        "total_host_walltime_s": None,
        "total_gpu_compute_time_s": None,
        "gpu_compute_cov_percent": None,
        "warnings": [],
        "errors": [],
    }


def _parse_line(line: str, out: dict) -> None:
    metric = _METRIC_LINE.match(line)
    if metric:
        stats = _metric_stats(metric.group(3))
        if stats:
            out["metrics"][METRICS[metric.group(2)]] = stats
        return
    _parse_banner(line, out)
    _parse_counts(line, out)
    _parse_severity(line, out)


def _metric_stats(body: str) -> dict:
    stats: dict = {}
    for name, pct, value in _STAT.findall(body):
        if pct:
            p = float(pct)
            stats.setdefault("percentiles", {})[int(p) if p.is_integer() else p] = float(value)
        else:
            stats[name] = float(value)
    return stats


def _parse_banner(line: str, out: dict) -> None:
    banner = _BANNER.search(line)
    if banner:
        if banner.group(1) in ("PASSED", "FAILED"):
            out["status"] = banner.group(1)
        if banner.group(2) and out["version"] is None:
            _set_version(out, version_from_tag(banner.group(2)))
    stated = _VERSION_LINE.search(line)
    if stated:
        _set_version(out, stated.group(1))  # the full version beats the banner's number


def _set_version(out: dict, version: str) -> None:
    out["version"] = version
    out["version_major"] = int(version.split(".")[0])


_SCALARS = (
    (_THROUGHPUT, "throughput_qps"),
    (_WALLTIME, "total_host_walltime_s"),
    (_GPU_TOTAL, "total_gpu_compute_time_s"),
    (_COV, "gpu_compute_cov_percent"),
)


def _parse_counts(line: str, out: dict) -> None:
    for pattern, key in _SCALARS:
        found = pattern.search(line)
        if found:
            out[key] = float(found.group(1))
    warmup = _WARMUP.search(line)
    if warmup:
        out["warmup"] = {"queries": int(warmup.group(1)), "ms": float(warmup.group(2))}
    trace = _TRACE.search(line)
    if trace:
        out["trace"] = {"queries": int(trace.group(1)), "seconds": float(trace.group(2))}


def _parse_severity(line: str, out: dict) -> None:
    tagged = re.match(_PREFIX + r"(.*)$", line)
    severity, message = (tagged.group(1), tagged.group(2).strip()) if tagged else (None, "")
    if severity in ("E", "F") and message:
        out["errors"].append(message)
    elif severity == "W" and message.startswith("* "):
        out["warnings"].append(message[2:])  # "* GPU compute time is unstable, ..." (a stability note)


# --- --exportTimes JSON --------------------------------------------------------------------------------


def parse_export_times(json_text: str | bytes) -> dict[str, list[float]]:
    """Read trtexec's ``--exportTimes`` JSON (one object per timed query; 8.5 and 10.x identical).

    Times are relative to trtexec's own start, not wall clock; ``start_ms`` lets drift over the run
    (thermal throttling, clock changes) be checked with :func:`drift`.

    Args:
        json_text: The file's text.

    Returns:
        ``{"start_ms", "compute_start_ms", "latency_ms", "compute_ms", "h2d_ms", "d2h_ms"}``, one value per
        query in the file's order.

    Raises:
        ValueError: Not JSON, not a list of objects, or a query misses a key (the message names it).
    """
    try:
        data = json.loads(json_text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--exportTimes output is not JSON: {exc}") from exc
    if not isinstance(data, list):
        raise ValueError(f"--exportTimes output should be a JSON list of queries, got {type(data).__name__}")
    out: dict[str, list[float]] = {name: [] for name in EXPORT_KEYS.values()}
    for index, query in enumerate(data):
        for key, name in EXPORT_KEYS.items():
            out[name].append(_query_value(query, index, key))
    return out


def _query_value(query: object, index: int, key: str) -> float:
    if not isinstance(query, dict) or key not in query:
        raise ValueError(f"--exportTimes query {index} has no {key!r} (keys: {sorted(query or {})})")
    try:
        return float(query[key])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--exportTimes query {index}: {key}={query[key]!r} is not a number") from exc


def drift(start_ms: Sequence[float], values: Sequence[float]) -> dict[str, float]:
    """How ``values`` (e.g. ``compute_ms``) move over the run: least-squares slope and last/first third.

    Returns:
        ``{"slope_ms_per_s", "first_third_mean", "last_third_mean", "ratio"}`` (ratio = last / first);
        zeros and ratio 1.0 with fewer than 3 queries.
    """
    n = len(values)
    if n < 3 or len(start_ms) != n:
        return {"slope_ms_per_s": 0.0, "first_third_mean": 0.0, "last_third_mean": 0.0, "ratio": 1.0}
    t = [s / 1000.0 for s in start_ms]
    t_mean, v_mean = sum(t) / n, sum(values) / n
    spread = sum((x - t_mean) ** 2 for x in t)
    slope = (
        sum((x - t_mean) * (v - v_mean) for x, v in zip(t, values, strict=True)) / spread if spread else 0.0
    )
    third = n // 3
    first, last = sum(values[:third]) / third, sum(values[-third:]) / third
    return {
        "slope_ms_per_s": slope,
        "first_third_mean": first,
        "last_third_mean": last,
        "ratio": last / first if first else 1.0,
    }


# --- argv ----------------------------------------------------------------------------------------------


def build_argv(
    trtexec: str,
    onnx: str,
    engine: str,
    *,
    int8: bool,
    fp16: bool,
    calib: str | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    workspace_mib: int | None = None,
    timing_cache: str | None = None,
    version_major: int | None = None,
    version_minor: int | None = None,
) -> list[str]:
    """Trtexec argv that builds (and only builds) an engine from an ONNX model.

    Args:
        trtexec: The executable (see :func:`find_trtexec`).
        onnx: ONNX model; a TensorRT-form QDQ model for INT8 on 11.x.
        engine: Where to save the engine.
        int8: INT8 layers. On 11.x the QDQ model carries INT8 itself, so no flag is written.
        fp16: FP16 layers (8.x/10.x only).
        calib: INT8 calibration cache (8.x/10.x; its header must name EntropyCalibration2, the calibrator
            trtexec uses). Without it trtexec's INT8 uses placeholder scales unless the model is QDQ.
        shapes: Input name -> shape for dynamic inputs (``--shapes=images:1x3x640x640``).
        workspace_mib: Builder workspace in MiB.
        timing_cache: Timing cache file (reused across builds; speeds up rebuilds).
        version_major: TensorRT major version on the device; None = the 8.5 form (valid on 8.4 ... 10.x).
        version_minor: Minor version, only needed on 8.x (< 8.4 has ``--workspace``, not ``--memPoolSize``).

    Returns:
        The argv list.

    Raises:
        ValueError: A request 11.x cannot honour (``calib``, ``fp16``), or ``calib`` without ``int8``.

    Example:
        >>> build_argv("trtexec", "m.onnx", "m.engine", int8=True, fp16=True, version_major=10)[3:]
        ['--int8', '--fp16', '--skipInference']
    """
    major = DEFAULT_MAJOR if version_major is None else version_major
    _check_build_request(major, int8, fp16, calib)
    argv = [trtexec, f"--onnx={onnx}", f"--saveEngine={engine}"]
    if major < 11:
        argv += ["--int8"] * int8 + ["--fp16"] * fp16
    if calib:
        argv.append(f"--calib={calib}")
    argv.append("--skipInference" if major >= 10 else "--buildOnly")
    if shapes:
        argv.append(
            "--shapes=" + ",".join(f"{name}:{'x'.join(map(str, dims))}" for name, dims in shapes.items())
        )
    if workspace_mib is not None:
        argv.append(_workspace_flag(major, version_minor, workspace_mib))
    if timing_cache:
        argv.append(f"--timingCacheFile={timing_cache}")
    return argv


def _check_build_request(major: int, int8: bool, fp16: bool, calib: str | None) -> None:
    if calib and not int8:
        raise ValueError("a calibration cache only applies to an INT8 build: pass int8=True or drop calib")
    if major >= 11 and calib:
        raise ValueError(
            "TensorRT 11 removed --calib (strongly typed networks only): build from a TensorRT-form QDQ "
            "model, which carries its INT8 scales (edgekit.backends.tensorrt.form.quantize_trt_qdq)"
        )
    if major >= 11 and fp16:
        raise ValueError(
            "TensorRT 11 removed --fp16: export the ONNX with FP16 weights/casts to get FP16 layers"
        )


def _workspace_flag(major: int, minor: int | None, mib: int) -> str:
    if major < 8 or (major == 8 and minor is not None and minor < 4):
        return f"--workspace={mib}"
    return f"--memPoolSize=workspace:{mib}"


def time_argv(
    trtexec: str,
    engine: str,
    *,
    warmup_ms: int,
    duration_s: int,
    iterations: int,
    export_times: str | None,
    avg_runs: int,
    percentiles: Sequence[float],
    spin_wait: bool = True,
    data_transfers: bool = True,
    cuda_graph: bool = False,
    version_major: int | None = None,
    version_minor: int | None = None,
) -> list[str]:
    """Trtexec argv that times a saved engine, with the same meaning on every TensorRT version.

    TensorRT 11 changed the defaults (transfers off, spin wait and CUDA graphs on); the flags written here
    state each choice explicitly so "Latency" means the same on 8.x, 10.x and 11.x.

    Args:
        trtexec: The executable.
        engine: The engine built by :func:`build_argv`.
        warmup_ms: Warm-up before timing (``--warmUp``).
        duration_s: Minimum timed wall time (``--duration``).
        iterations: Minimum timed queries (``--iterations``).
        export_times: Where to write per-query times (``--exportTimes``), or None.
        avg_runs: Queries averaged per reported run (``--avgRuns``).
        percentiles: Percentiles to print. Before 8.5 trtexec takes one value: the highest is passed and
            the rest come from the ``--exportTimes`` file.
        spin_wait: Busy-wait on GPU events (steadier latency, more CPU power).
        data_transfers: Include H2D/D2H copies in "Latency".
        cuda_graph: Capture the enqueue in a CUDA graph.
        version_major: TensorRT major version; None = the 8.5 form (valid on 8.5 ... 10.x).
        version_minor: Minor version (8.x: percentile lists need 8.5+).

    Returns:
        The argv list.

    Example:
        >>> time_argv("trtexec", "m.engine", warmup_ms=2000, duration_s=30, iterations=1000,
        ...           export_times=None, avg_runs=100, percentiles=[50, 90, 99])[-2:]
        ['--percentile=50,90,99', '--useSpinWait']
    """
    major = DEFAULT_MAJOR if version_major is None else version_major
    argv = [
        trtexec,
        f"--loadEngine={engine}",
        f"--warmUp={int(warmup_ms)}",
        f"--duration={int(duration_s)}",
        f"--iterations={int(iterations)}",
        f"--avgRuns={int(avg_runs)}",
    ]
    if export_times:
        argv.append(f"--exportTimes={export_times}")
    if percentiles:
        argv.append("--percentile=" + _percentile_list(major, version_minor, percentiles))
    return argv + _timing_mode_flags(major, spin_wait, data_transfers, cuda_graph)


def _percentile_list(major: int, minor: int | None, percentiles: Sequence[float]) -> str:
    values = sorted({float(p) for p in percentiles})
    if major < 8 or (major == 8 and minor is not None and minor < 5):
        values = values[-1:]  # one percentile only before 8.5
    return ",".join(f"{p:g}" for p in values)


def _timing_mode_flags(major: int, spin_wait: bool, data_transfers: bool, cuda_graph: bool) -> list[str]:
    if major >= 11:
        flags = [] if spin_wait else ["--noSpinWait"]
        flags += ["--includeDataTransfers"] if data_transfers else []
        return flags + ([] if cuda_graph else ["--noCudaGraph"])
    flags = ["--useSpinWait"] if spin_wait else []
    flags += [] if data_transfers else ["--noDataTransfers"]
    return flags + (["--useCudaGraph"] if cuda_graph else [])
