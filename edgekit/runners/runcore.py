"""Device-side facts shared by every runner (stdlib only: it is pushed to the board beside the runner).

The CPU's instruction set is a device fact like its clock or its temperature: INT8 kernels differ by
it (on x86 without VNNI, ONNX Runtime's u8s8 kernels multiply with ``vpmaddubsw``, whose pairwise
int16 sums saturate; VNNI's ``vpdpbusd`` and Arm's ``sdot``/``udot`` accumulate in int32), so the
runner reports it with every measurement and the host quantizes for it.
"""

from __future__ import annotations

import os
import platform

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


def _cpuinfo_flags(text: str) -> tuple[set[str], str]:
    """Return the feature flags and the model name found in a /proc/cpuinfo text."""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
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
    arch = (arch or platform.machine()).lower()
    try:
        with open(cpuinfo_path) as fh:
            flags, model = _cpuinfo_flags(fh.read())
    except OSError:
        flags, model = set(), ""
    known = X86_FEATURES if arch in ("x86_64", "amd64", "i686", "x86") else ARM_FEATURES
    features = [f for f in known if f in flags]
    return {
        "arch": arch,
        "model": model or platform.processor(),
        "features": features,
        "int8_dot": int8_dot(arch, features),
    }


def device_facts() -> dict:
    """Platform facts recorded with every measurement (CPU instruction set included)."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "cpu": cpu_features(),
    }
