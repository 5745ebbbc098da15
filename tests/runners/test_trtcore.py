"""trtcore: trtexec's output across TensorRT 8.x-11.x, its --exportTimes JSON, and version-aware argv.

The summary lines (Throughput, the six metrics, Total ... Time) are copied verbatim from the research
notes (device-benchmarking.md §2.2), which quote public sources; ``...`` inside a line is the source's own
truncation and is kept. The banner, ``TensorRT version``, warm-up/trace and ``[W]``/``[E]`` lines added
around them, and the failed run, are built from the formats §2.2 states (not recorded verbatim).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.backends.tensorrt import trtcore
from edgekit.backends.tensorrt.trtcore import (
    TRT_MISSING,
    build_argv,
    drift,
    find_trtexec,
    parse_export_times,
    parse_trtexec,
    time_argv,
    version_from_tag,
)

# TRT 8.5 on a Jetson (AGX Xavier, OE4T/meta-tegra#1150); banner line from §2.2's "last line" example.
TRT85_JETSON = """\
[12/20/2022-18:24:07] [I] === Performance summary ===
[12/20/2022-18:24:07] [I] Throughput: 43073.6 qps
[12/20/2022-18:24:07] [I] Latency: min = 0.369385 ms, max = 2.36157 ms, mean = 0.386481 ms, median = 0.385986 ms, percentile(90%) = 0.391113 ms, percentile(95%) = 0.393066 ms, percentile(99%) = 0.404907 ms
[12/20/2022-18:24:07] [I] Enqueue Time: min = 0.156738 ms, max = 2.35205 ms, mean = 0.185932 ms, median = 0.181396 ms, percentile(90%) = 0.209473 ms, percentile(95%) = 0.22229 ms, ...
[12/20/2022-18:24:07] [I] GPU Compute Time: min = 0.35675 ms, max = 2.34995 ms, mean = 0.369765 ms, median = 0.369873 ms, percentile(90%) = 0.373779 ms, ...
&&&& PASSED TensorRT.trtexec [TensorRT v8502] # trtexec --loadEngine=model.int8.engine
"""  # noqa: E501

# TRT 10.x desktop (NVIDIA/TensorRT#4177), with a version line and banner as 10.3 prints them.
TRT10_DESKTOP = """\
[10/03/2024-10:47:50] [I] TensorRT version: 10.3.0
[10/03/2024-10:47:56] [I] Warmup completed 26 queries over 200 ms
[10/03/2024-10:47:56] [I] Timing trace has 391 queries over 3.00082 s
[10/03/2024-10:47:59] [I] === Performance summary ===
[10/03/2024-10:47:59] [I] Throughput: 130.298 qps
[10/03/2024-10:47:59] [I] Latency: min = 5.38672 ms, max = 13.3664 ms, mean = 7.60628 ms, median = 7.16092 ms, percentile(90%) = 10.2996 ms, percentile(95%) = 10.8698 ms, percentile(99%) = 12.9675 ms
[10/03/2024-10:47:59] [I] Enqueue Time: min = 2.72876 ms, max = 15.0201 ms, mean = 7.63062 ms, median = 7.86694 ms, percentile(90%) = 10.1792 ms, percentile(95%) = 11.7217 ms, percentile(99%) = 14.1848 ms
[10/03/2024-10:47:59] [I] H2D Latency: min = 0.0065918 ms, max = 0.0698242 ms, mean = 0.0122212 ms, median = 0.00814819 ms, percentile(90%) = 0.0253906 ms, percentile(95%) = 0.0270996 ms, percentile(99%) = 0.0515137 ms
[10/03/2024-10:47:59] [I] GPU Compute Time: min = 5.34595 ms, max = 13.3388 ms, mean = 7.58404 ms, median = 7.14139 ms, percentile(90%) = 10.2881 ms, percentile(95%) = 10.8175 ms, percentile(99%) = 12.9485 ms
[10/03/2024-10:47:59] [I] D2H Latency: min = 0.00390625 ms, max = 0.110596 ms, mean = 0.0100141 ms, median = 0.00439453 ms, percentile(90%) = 0.0254517 ms, percentile(95%) = 0.0319824 ms, percentile(99%) = 0.0994873 ms
[10/03/2024-10:47:59] [I] Total Host Walltime: 3.00082 s
[10/03/2024-10:47:59] [I] Total GPU Compute Time: 2.96536 s
[10/03/2024-10:47:59] [W] * Throughput may be bound by E...
[10/03/2024-10:47:59] [W] * GPU compute time is unstable, with coefficient of variance = 5.55763%.
[10/03/2024-10:47:59] [W]   If not already in use, locking GPU clock frequency or adding --useSpinWait may improve the stability.
&&&& PASSED TensorRT.trtexec [TensorRT v100300] # trtexec --loadEngine=m.engine
"""  # noqa: E501

# TRT <= 8.2 on Xavier NX (OE4T/meta-tegra#1124): one percentile, plus End-to-End Host Latency.
TRT82_XAVIER_NX = """\
[12/06/2022-15:00:20] [I] Throughput: 27207 qps
[12/06/2022-15:00:20] [I] Latency: min = 0.564209 ms, max = 0.593018 ms, mean = 0.573891 ms, median = 0.572998 ms, percentile(99%) = 0.587769 ms
[12/06/2022-15:00:20] [I] End-to-End Host Latency: min = 0.574707 ms, max = 0.606201 ms, mean = 0.586663 ms, median = 0.585938 ms, percentile(99%) = 0.601685 ms
"""  # noqa: E501

# A failed build: what trtexec prints when the parser rejects a model (format per §2.2's tags).
TRT_FAILED = """\
[12/06/2022-15:00:01] [E] [TRT] ModelImporter.cpp:726: While parsing node number 3 [QLinearConv -> "y"]:
[12/06/2022-15:00:01] [E] Failed to parse onnx file
[12/06/2022-15:00:01] [F] Engine could not be created
&&&& FAILED TensorRT.trtexec [TensorRT v8401] # trtexec --onnx=m.onnx
"""

# --exportTimes: one object per timed query with the keys of §2.2 (values invented, shape recorded).
EXPORT_KEYS = (
    "startEnqMs endEnqMs startH2dMs endH2dMs startComputeMs endComputeMs startD2hMs endD2hMs h2dMs "
    "computeMs d2hMs latencyMs"
).split()


def export_json(n: int = 9, slow_after: int | None = None) -> str:
    queries = []
    for i in range(n):
        compute = 2.0 if slow_after is None or i < slow_after else 3.0
        start = 200.0 + 2.5 * i
        times = [start, start + 0.1, start + 0.1, start + 0.15, start + 0.15, start + 0.15 + compute]
        times += [times[-1], times[-1] + 0.05, 0.05, compute, 0.05, compute + 0.2]
        queries.append(dict(zip(EXPORT_KEYS, times, strict=True)))
    return json.dumps(queries, indent=2)


def test_trt85_jetson_summary() -> None:
    res = parse_trtexec(TRT85_JETSON)
    assert (res["version"], res["version_major"], res["status"]) == ("8.5.2", 8, "PASSED")
    assert res["throughput_qps"] == 43073.6
    lat = res["metrics"]["latency"]
    assert lat == {
        "min": 0.369385,
        "max": 2.36157,
        "mean": 0.386481,
        "median": 0.385986,
        "percentiles": {90: 0.391113, 95: 0.393066, 99: 0.404907},
    }
    # Truncated lines keep what they show.
    assert res["metrics"]["enqueue_time"]["percentiles"] == {90: 0.209473, 95: 0.22229}
    assert res["metrics"]["gpu_compute_time"]["percentiles"] == {90: 0.373779}
    assert set(res["metrics"]) == {"latency", "enqueue_time", "gpu_compute_time"}
    assert res["errors"] == [] and res["warnings"] == []


def test_trt10_desktop_summary_warnings_and_counts() -> None:
    res = parse_trtexec(TRT10_DESKTOP)
    assert (res["version"], res["version_major"], res["status"]) == ("10.3.0", 10, "PASSED")
    assert set(res["metrics"]) == {
        "latency",
        "enqueue_time",
        "h2d_latency",
        "gpu_compute_time",
        "d2h_latency",
    }
    assert res["metrics"]["d2h_latency"]["percentiles"][99] == 0.0994873
    assert res["metrics"]["gpu_compute_time"]["median"] == 7.14139
    assert res["warmup"] == {"queries": 26, "ms": 200.0}
    assert res["trace"] == {"queries": 391, "seconds": 3.00082}
    assert res["total_host_walltime_s"] == 3.00082 and res["total_gpu_compute_time_s"] == 2.96536
    assert res["gpu_compute_cov_percent"] == 5.55763
    assert res["warnings"] == [
        "Throughput may be bound by E...",
        "GPU compute time is unstable, with coefficient of variance = 5.55763%.",
    ]


def test_trt82_xavier_nx_end_to_end_and_single_percentile() -> None:
    res = parse_trtexec(TRT82_XAVIER_NX)
    assert res["throughput_qps"] == 27207.0
    e2e = res["metrics"]["end_to_end_host_latency"]
    assert e2e["percentiles"] == {99: 0.601685} and e2e["mean"] == 0.586663
    assert res["metrics"]["latency"]["min"] == 0.564209
    assert res["version"] is None and res["status"] is None  # the excerpt has no banner


def test_failed_run_collects_errors_and_status() -> None:
    res = parse_trtexec(TRT_FAILED.encode())
    assert (res["status"], res["version"]) == ("FAILED", "8.4.1")
    assert res["errors"] == [
        '[TRT] ModelImporter.cpp:726: While parsing node number 3 [QLinearConv -> "y"]:',
        "Failed to parse onnx file",
        "Engine could not be created",
    ]
    assert res["metrics"] == {} and res["throughput_qps"] is None


def test_trt11_style_banner_and_untagged_lines() -> None:
    text = "Throughput: 12.5 qps\nLatency: min = 1 ms, max = 3 ms, mean = 2 ms, median = 2 ms\r\n"
    text += "&&&& PASSED TensorRT.trtexec [TensorRT v110100] # trtexec\n"
    res = parse_trtexec(text)
    assert res["version"] == "11.1.0" and res["version_major"] == 11
    assert res["metrics"]["latency"] == {"min": 1.0, "max": 3.0, "mean": 2.0, "median": 2.0}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "garbage \x00 line\n[I] Latency: nothing here\n[I] Throughput: fast qps\n"
        "&&&& RUNNING TensorRT.trtexec",
        "[W] [TRT] plain warning, not a stability note\n[I] percentile(99%) = 3 ms\n",
    ],
)
def test_empty_and_malformed_output_gives_empty_fields(text: str) -> None:
    res = parse_trtexec(text)
    assert res["metrics"] == {} and res["warnings"] == [] and res["errors"] == []
    assert res["throughput_qps"] is None and res["status"] is None and res["warmup"] is None


def test_version_tags() -> None:
    assert version_from_tag("8502") == "8.5.2"
    assert version_from_tag(100300) == "10.3.0"
    assert version_from_tag("6001") == "6.0.1"
    assert version_from_tag("8401") == "8.4.1"


def test_export_times_gives_per_query_latency_compute_and_start() -> None:
    times = parse_export_times(export_json(9))
    assert times["latency_ms"] == pytest.approx([2.2] * 9)
    assert times["compute_ms"] == [2.0] * 9
    assert times["start_ms"] == [200.0 + 2.5 * i for i in range(9)]
    assert len(times["compute_start_ms"]) == len(times["h2d_ms"]) == len(times["d2h_ms"]) == 9
    steady = drift(times["start_ms"], times["compute_ms"])
    assert steady["ratio"] == 1.0 and steady["slope_ms_per_s"] == 0.0
    slowing = parse_export_times(export_json(9, slow_after=6))
    moved = drift(slowing["start_ms"], slowing["compute_ms"])
    assert moved["ratio"] == pytest.approx(1.5) and moved["slope_ms_per_s"] > 0
    assert parse_export_times("[]")["latency_ms"] == []


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{not json", "not JSON"),
        ('{"latencyMs": 1}', "should be a JSON list"),
        ('[{"latencyMs": 1.0}]', "query 0 has no 'startEnqMs'"),
        (
            export_json(2).replace('"computeMs": 2.0', '"computeMs": "fast"', 1),
            "computeMs='fast' is not a number",
        ),
    ],
)
def test_malformed_export_times_name_the_problem(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_export_times(text)


def test_build_argv_per_version() -> None:
    common = {"int8": True, "fp16": True, "calib": "m.calib", "workspace_mib": 2048, "timing_cache": "tc.bin"}
    jp5 = build_argv("trtexec", "m.onnx", "m.engine", version_major=8, version_minor=5, **common)
    assert jp5 == [
        "trtexec",
        "--onnx=m.onnx",
        "--saveEngine=m.engine",
        "--int8",
        "--fp16",
        "--calib=m.calib",
        "--buildOnly",
        "--memPoolSize=workspace:2048",
        "--timingCacheFile=tc.bin",
    ]
    assert build_argv("trtexec", "m.onnx", "m.engine", **common) == jp5  # no version: the 8.5 form
    jp4 = build_argv("trtexec", "m.onnx", "m.engine", version_major=8, version_minor=2, **common)
    assert "--workspace=2048" in jp4 and not any(a.startswith("--memPoolSize") for a in jp4)
    jp6 = build_argv("trtexec", "m.onnx", "m.engine", version_major=10, **common)
    assert "--skipInference" in jp6 and "--buildOnly" not in jp6 and "--int8" in jp6
    shapes = build_argv("t", "m.onnx", "e", int8=False, fp16=True, shapes={"images": (1, 3, 640, 640)})
    assert "--shapes=images:1x3x640x640" in shapes


def test_build_argv_trt11_is_strongly_typed() -> None:
    argv = build_argv("trtexec", "m.qdq.onnx", "m.engine", int8=True, fp16=False, version_major=11)
    assert argv == ["trtexec", "--onnx=m.qdq.onnx", "--saveEngine=m.engine", "--skipInference"]
    with pytest.raises(ValueError, match="TensorRT 11 removed --calib"):
        build_argv("trtexec", "m.onnx", "e", int8=True, fp16=False, calib="c", version_major=11)
    with pytest.raises(ValueError, match="TensorRT 11 removed --fp16"):
        build_argv("trtexec", "m.onnx", "e", int8=True, fp16=True, version_major=11)
    with pytest.raises(ValueError, match="only applies to an INT8 build"):
        build_argv("trtexec", "m.onnx", "e", int8=False, fp16=True, calib="c")


def test_time_argv_means_the_same_on_every_version() -> None:
    kw = {
        "warmup_ms": 2000,
        "duration_s": 30,
        "iterations": 1000,
        "export_times": "times.json",
        "avg_runs": 100,
        "percentiles": [99, 50, 90],
    }
    jp5 = time_argv("trtexec", "m.engine", **kw)
    assert jp5 == [
        "trtexec",
        "--loadEngine=m.engine",
        "--warmUp=2000",
        "--duration=30",
        "--iterations=1000",
        "--avgRuns=100",
        "--exportTimes=times.json",
        "--percentile=50,90,99",
        "--useSpinWait",
    ]
    assert time_argv("trtexec", "m.engine", version_major=10, **kw) == jp5
    old = time_argv("trtexec", "m.engine", version_major=8, version_minor=2, **kw)
    assert "--percentile=99" in old
    trt11 = time_argv("trtexec", "m.engine", version_major=11, **kw)
    assert trt11[-2:] == ["--includeDataTransfers", "--noCudaGraph"] and "--useSpinWait" not in trt11
    quiet = time_argv("trtexec", "m.engine", spin_wait=False, data_transfers=False, version_major=11, **kw)
    assert quiet[-2:] == ["--noSpinWait", "--noCudaGraph"]
    compute_only = time_argv("trtexec", "e", spin_wait=False, data_transfers=False, cuda_graph=True, **kw)
    assert compute_only[-2:] == ["--noDataTransfers", "--useCudaGraph"]


def test_find_trtexec_path_then_jetpack_location(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "trtexec"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_trtexec({"PATH": str(fake.parent)}) == str(fake)
    jetpack = tmp_path / "usr-src-tensorrt-bin-trtexec"
    jetpack.write_text("#!/bin/sh\n")
    jetpack.chmod(0o755)
    assert find_trtexec({"PATH": str(tmp_path / "empty")}, fallback=str(jetpack)) == str(jetpack)
    assert find_trtexec({"PATH": str(tmp_path / "empty")}, fallback=str(tmp_path / "none")) is None
    assert trtcore.JETSON_TRTEXEC == "/usr/src/tensorrt/bin/trtexec"
    assert "sudo apt install tensorrt" in TRT_MISSING and "nvidia-jetpack" in TRT_MISSING
    assert trtcore.JETSON_TRTEXEC in TRT_MISSING


def test_trtcore_is_stdlib_only_and_runs_standalone(tmp_path: Path) -> None:
    source = Path(trtcore.__file__)
    tree = ast.parse(source.read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
    # Copied alone into a folder, as on the Jetson: it imports and parses without numpy or edgekit.
    copy = tmp_path / "trtcore.py"
    copy.write_text(source.read_text())
    code = (
        "import sys, trtcore; r = trtcore.parse_trtexec(sys.stdin.read()); "
        "assert 'numpy' not in sys.modules and 'edgekit' not in sys.modules; print(r['version'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r}); {code}"],
        input=TRT85_JETSON,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    assert res.stdout.strip() == "8.5.2"
