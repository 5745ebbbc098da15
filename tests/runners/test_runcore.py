"""The runner's device facts: the CPU's INT8 instruction set from /proc/cpuinfo texts of real CPU kinds.

The files in ``cpuinfo/`` are /proc/cpuinfo excerpts: ``epyc-zen4.txt`` recorded on this project's
build host, the others representative of their CPU kind (flags as Linux names them).
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from edgekit.runners import runcore

CPUINFO = Path(__file__).parent / "cpuinfo"


@pytest.mark.parametrize(
    ("name", "arch", "dot", "present", "absent"),
    [
        ("epyc-zen3.txt", "x86_64", "vpmaddubsw", {"avx2", "fma"}, {"avx512f", "avx512_vnni"}),
        ("epyc-zen4.txt", "x86_64", "vnni", {"avx2", "avx512f", "avx512_vnni"}, {"amx_int8"}),
        ("haswell.txt", "x86_64", "vpmaddubsw", {"avx2", "f16c"}, {"avx512f", "avx_vnni"}),
        ("cortex-a72.txt", "aarch64", "neon", {"asimd"}, {"asimddp", "i8mm"}),
        ("cortex-a76.txt", "aarch64", "sdot", {"asimd", "asimdhp", "asimddp"}, {"i8mm"}),
    ],
)
def test_cpu_features_name_the_int8_dot_product(name, arch, dot, present, absent):
    facts = runcore.cpu_features(str(CPUINFO / name), arch=arch)
    assert facts["arch"] == arch and facts["int8_dot"] == dot
    assert present <= set(facts["features"]) and not absent & set(facts["features"])
    assert set(facts["features"]) <= set(runcore.X86_FEATURES + runcore.ARM_FEATURES)


def test_model_name_is_read(tmp_path):
    assert runcore.cpu_features(str(CPUINFO / "epyc-zen3.txt"), arch="x86_64")["model"] == "AMD EPYC 7B13"


def test_no_cpuinfo_means_unknown_not_a_guess(tmp_path):
    facts = runcore.cpu_features(str(tmp_path / "missing"), arch="x86_64")
    assert facts["features"] == [] and facts["int8_dot"] == "unknown"


def test_emulator_override(monkeypatch):
    monkeypatch.setenv("EDGEKIT_CPUINFO", str(CPUINFO / "haswell.txt"))
    assert runcore.cpu_features(arch="x86_64")["int8_dot"] == "vpmaddubsw"


def test_device_facts_carry_this_cpu():
    facts = runcore.device_facts()
    assert facts["machine"] == platform.machine() and facts["cpu"]["arch"] == platform.machine().lower()
    if Path("/proc/cpuinfo").is_file():
        assert facts["cpu"]["features"] and facts["cpu"]["int8_dot"] != "unknown"


def test_int8_inputs_are_quantized_with_the_sidecars_scale_never_cast():
    import numpy as np

    meta = {"input": {"dtype": "int8", "quantization": {"scale": 1 / 255, "zero_point": -128}}}
    x = np.array([[0.0, 0.25, 1.0, 2.0]], dtype=np.float32)
    q = runcore.to_model_input(x, meta)
    assert q.dtype == np.int8 and q.tolist() == [[-128, -64, 127, 127]]  # rounded, offset, clipped
    out = runcore.to_float_output(q, {"output": {"quantization": {"scale": 1 / 255, "zero_point": -128}}})
    np.testing.assert_allclose(out, [[0.0, 64 / 255, 1.0, 1.0]], atol=1e-6)
    with pytest.raises(runcore.RunnerError, match="no scale / zero point"):
        runcore.to_model_input(x, {"input": {"dtype": "int8"}})
    assert runcore.to_model_input(x, {"input": {"dtype": "float32"}}) is not None


def test_pinning_drops_cores_the_device_lacks():
    import os

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip(reason="this OS has no sched_setaffinity")
    before = os.sched_getaffinity(0)
    try:
        first = min(before)
        pinned = runcore.pin_cpus([first, 4096])
        assert pinned == {"asked": [first, 4096], "used": [first]} and os.sched_getaffinity(0) == {first}
        assert runcore.pin_cpus([4096])["used"] is None  # nothing left: no pinning, and the record says so
        assert runcore.pin_cpus(None) is None
    finally:
        os.sched_setaffinity(0, before)
