"""TensorRT INT8 calibration cache, in TensorRT's own text format.

The file is a header ``TRT-<version>-<algorithm>`` (``8502`` = TensorRT 8.5.2, ``100300`` = 10.3.0) and one
line per tensor ``<name>: <8 hex digits>``: the big-endian IEEE-754 float32 bits of the **scale**, with
dynamic range = scale x 127. Tensor names may contain spaces, ``:``, ``*`` and brackets, so a line is split
on its last ``": "``. TensorRT only accepts a cache whose header matches its own version and calibrator
algorithm, so build the cache for the TensorRT version on the device.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np

from edgekit.core.errors import CalibrationError, ConfigError
from edgekit.core.files import atomic_write_text

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
DEFAULT_VERSION = "8502"  # JetPack 5.1 ships TensorRT 8.5.2
DEFAULT_ALGO = "EntropyCalibration2"  # TensorRT's recommended calibrator, and the one trtexec --calib uses
INT8_MAX = 127.0

#: edgekit calibration method -> the TensorRT calibrator whose algorithm makes that kind of scale. The
#: header must name the calibrator that made the scales: TensorRT only reuses a cache written for its own
#: calibrator's algorithm. ``percentile`` has no TensorRT calibrator and is refused (see
#: :func:`calibrator_for`).
METHOD_ALGOS = {"minmax": "MinMaxCalibration", "entropy": "EntropyCalibration2"}
#: Header algorithms that may label each method's scales (the older entropy calibrator is the same family).
_COMPATIBLE = {"minmax": ("MinMaxCalibration",), "entropy": ("EntropyCalibration2", "EntropyCalibration")}
_NO_TRT_CALIBRATOR = {
    "percentile": "TensorRT has no percentile calibrator (LegacyCalibration's quantile search is another "
    "algorithm, and labelling percentile scales with it would misstate how they were made)",
}


def version_tag(version: str | int) -> str:
    """Normalise ``8.5.2`` / ``8502`` / ``10.3.0`` to the number TensorRT writes in its header.

    Raises:
        ConfigError: The version is neither digits nor ``major.minor.patch``.
    """
    text = str(version).strip()
    if text.isdigit():
        return text
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text)
    if not m:
        raise ConfigError(
            f"bad TensorRT version {version!r}", "write it like 8.5.2 or 8502 (see trtexec's banner)"
        )
    major, minor, patch = map(int, m.groups())
    # TensorRT < 10 encodes M*1000 + m*100 + p (8502); 10+ encodes M*10000 + m*100 + p (100300).
    return str(major * (10000 if major >= 10 else 1000) + minor * 100 + patch)


def calibrator_for(method: str, algo: str | None = None) -> str:
    """The calibrator name for a cache whose scales edgekit's ``method`` made.

    ``minmax`` -> ``MinMaxCalibration``, ``entropy`` -> ``EntropyCalibration2``. An explicit ``algo``
    must agree with the method (``EntropyCalibration`` is also accepted for ``entropy``).

    Args:
        method: edgekit calibration method (minmax, entropy, percentile).
        algo: Header algorithm the caller asked for, or None for the method's own.

    Returns:
        The algorithm to write in the header.

    Raises:
        ConfigError: ``method`` has no TensorRT calibrator (percentile), is unknown, or contradicts ``algo``.

    Example:
        >>> calibrator_for("minmax")
        'MinMaxCalibration'
    """
    if method in _NO_TRT_CALIBRATOR:
        raise ConfigError(
            f"calibration method {method!r} cannot be exported as a TensorRT calibration cache: "
            f"{_NO_TRT_CALIBRATOR[method]}",
            f"export with --method {' or '.join(METHOD_ALGOS)}, or ship a TensorRT-form QDQ model "
            "(edgekit.backends.tensorrt.form.quantize_trt_qdq), which carries any method's scales itself",
        )
    if method not in METHOD_ALGOS:
        raise ConfigError(f"unknown calibration method {method!r}", f"use one of {', '.join(METHOD_ALGOS)}")
    if algo is None:
        return METHOD_ALGOS[method]
    if algo not in ALGORITHMS:
        raise ConfigError(f"unknown TensorRT calibrator {algo!r}", f"use one of {', '.join(ALGORITHMS)}")
    if algo not in _COMPATIBLE[method]:
        raise ConfigError(
            f"--algo {algo} contradicts --method {method}: the scales come from {method}, whose TensorRT "
            f"calibrator is {METHOD_ALGOS[method]}",
            f"drop --algo (the header follows the method) or pass --method {method_for(algo)}"
            if algo in _METHOD_OF
            else "drop --algo (the header follows the method)",
        )
    return algo


#: Header algorithm -> the edgekit method whose scales it names (LegacyCalibration has none).
_METHOD_OF = {algo: method for method, algos in _COMPATIBLE.items() for algo in algos}


def method_for(algo: str) -> str:
    """The edgekit method that makes the scales a header ``algo`` names (inverse of :func:`calibrator_for`).

    Raises:
        ConfigError: ``algo`` is unknown or no edgekit method computes its scales (LegacyCalibration).
    """
    if algo not in ALGORITHMS:
        raise ConfigError(f"unknown TensorRT calibrator {algo!r}", f"use one of {', '.join(ALGORITHMS)}")
    if algo not in _METHOD_OF:
        raise ConfigError(
            f"edgekit has no calibration method that makes {algo} scales",
            f"use --algo {' or '.join(sorted(_METHOD_OF))}, or --method {' or '.join(METHOD_ALGOS)}",
        )
    return _METHOD_OF[algo]


def scale_from_range(lo: float, hi: float) -> float:
    """Symmetric INT8 scale of an activation range: ``max(|lo|, |hi|) / 127`` (float32)."""
    return float(np.float32(max(abs(float(lo)), abs(float(hi)))) / np.float32(INT8_MAX))


def _check_scale(what: str, scale: float) -> np.float32:
    value = np.float32(scale)
    if not math.isfinite(float(value)) or float(value) <= 0.0:
        raise CalibrationError(
            f"{what} has scale {float(scale)!r}; TensorRT needs a finite scale > 0",
            "the calibration data never reached this tensor or overflowed it: check the set "
            "(edgekit calib show) and that its preprocessing matches the model",
        )
    return value


def encode_scale(scale: float) -> str:
    """The 8 hex digits TensorRT writes for ``scale`` (big-endian float32 bits)."""
    return struct.pack(">f", float(np.float32(scale))).hex()


def decode_scale(hex8: str) -> float:
    """Inverse of :func:`encode_scale`."""
    return struct.unpack(">f", bytes.fromhex(hex8))[0]


def write_trt_cache(
    scales: dict[str, float],
    path: str | Path,
    version: str | int = DEFAULT_VERSION,
    algo: str = DEFAULT_ALGO,
) -> Path:
    """Write a TensorRT calibration cache atomically.

    Args:
        scales: Tensor name -> scale (``amax / 127``).
        path: Output file.
        version: TensorRT version (``8502`` or ``8.5.2``).
        algo: Calibrator algorithm named in the header (one of :data:`ALGORITHMS`).

    Raises:
        CalibrationError: A scale is zero, negative, inf or nan, or a name cannot be written.
        ConfigError: Unknown algorithm or version.

    Example:
        >>> write_trt_cache({"images": 1 / 127}, "calib.cache")  # doctest: +SKIP
    """
    if algo not in ALGORITHMS:
        raise ConfigError(f"unknown TensorRT calibrator {algo!r}", f"use one of {', '.join(ALGORITHMS)}")
    if not scales:
        raise CalibrationError("no tensor scales to write", "the model has no calibrated activations")
    lines = [f"TRT-{version_tag(version)}-{algo}"]
    for name, scale in scales.items():
        if not name or "\n" in name:
            raise CalibrationError(f"tensor name {name!r} cannot be written to a cache", "rename the tensor")
        lines.append(f"{name}: {encode_scale(_check_scale(f'tensor {name!r}', scale))}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def read_trt_cache(path: str | Path) -> tuple[str, dict[str, float]]:
    """Parse a TensorRT calibration cache.

    Returns:
        (header, tensor name -> scale as the exact float32 value).

    Raises:
        CalibrationError: Bad header, a malformed line, or an inf/nan/zero scale (names the line).
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    header = lines[0].strip() if lines else ""
    if not re.fullmatch(r"TRT-\d+-\w+", header):
        raise CalibrationError(
            f"{path}: not a TensorRT calibration cache (header {header!r})", "regenerate it"
        )
    scales: dict[str, float] = {}
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        name, sep, hex8 = line.rpartition(": ")
        if not sep or not re.fullmatch(r"[0-9a-fA-F]{8}", hex8.strip()):
            raise CalibrationError(f"{path}:{lineno}: malformed line {line!r}", "expected 'tensor: hhhhhhhh'")
        scales[name] = float(_check_scale(f"{path}:{lineno}: tensor {name!r}", decode_scale(hex8.strip())))
    return header, scales
