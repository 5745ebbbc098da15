"""A simulated Jetson Xavier NX (JetPack 5.1.2) for the power sampler's tests.

The board's power is a known RAMP, ``W(t) = w0 + slope * (t - t0)`` on ``time.monotonic()`` (the clock
is system-wide, so the fake tools and the sampler share it); a test compares what was sampled with
the ramp at the same instants, and energies with :func:`true_energy_j`.

Pieces:
    * ``bin/tegrastats``, ``bin/nvpmodel``, ``bin/vcgencmd``: fake tools, copied by
      :func:`make_fakeboard` into ``<folder>/bin`` with this interpreter in their ``#!`` line;
    * ``<folder>/ramp.json``: ``{"t0", "w0", "slope"}``, read by the fake tools;
    * ``<folder>/sysfs``: a fake root with the INA3221 hwmon tree, the device-tree model,
      ``/etc/nv_tegra_release``, a thermal zone, six CPUs' cpufreq and the GPU devfreq node;
      :func:`start_sysfs_writer` keeps the INA3221 files following the ramp.

Example (in a test)::

    env = {**os.environ, **make_fakeboard(tmp_path, w0=5.0, slope=2.0)}
    with start_sysfs_writer(tmp_path, 0.005):
        subprocess.run([sys.executable, POWER_SAMPLE, "--sensor", "ina3221", ...], env=env)
"""

from __future__ import annotations

import bisect
import json
import os
import sys
import threading
import time
from pathlib import Path

BIN = Path(__file__).resolve().parent / "bin"
TOOLS = ("tegrastats", "nvpmodel", "vcgencmd", "trtexec")
#: ``trtexec`` is a test double (ONNX Runtime behind trtexec's CLI): no TensorRT exists on this host.
HWMON = "sys/bus/i2c/drivers/ina3221/7-0040/hwmon/hwmon3"
#: (channel, label, bus mV, share of VDD_IN); channel 7 is the driver's "sum of shunt voltages".
CHANNELS = ((1, "VDD_IN", 5000, 1.0), (2, "VDD_CPU_GPU_CV", 5000, 0.3), (3, "VDD_SOC", 5000, 0.25))
MODEL = "NVIDIA Jetson Xavier NX Developer Kit"
L4T = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n"  # noqa: E501
CPU_KHZ = (1190400, 1420800)  # (current, max) of each of the six Carmel cores
GPU_HZ = (114750000, 1109250000)
THERMAL_MC = 45500


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so a reader sees the old content or the new, never half a number."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_ramp(folder: Path | str) -> dict:
    """The board's ``ramp.json``: ``{"t0", "w0", "slope"}``."""
    return json.loads((Path(folder) / "ramp.json").read_text())


def ramp_w(ramp: dict, t: float) -> float:
    """Board power (W) at monotonic time ``t``."""
    return ramp["w0"] + ramp["slope"] * (t - ramp["t0"])


def true_energy_j(ramp: dict, t0: float, t1: float) -> float:
    """Exact energy (J) of the ramp over ``[t0, t1]``."""
    return (ramp_w(ramp, t0) + ramp_w(ramp, t1)) / 2 * (t1 - t0)


def _write_ina3221(root: Path, watts: float) -> None:
    hwmon = root / HWMON
    for ch, _label, millivolts, share in CHANNELS:
        milliamps = round(1000 * watts * share * 1000 / millivolts)
        write_atomic(hwmon / f"curr{ch}_input", f"{milliamps}\n")
        write_atomic(hwmon / f"in{ch}_input", f"{millivolts}\n")


def _write_static_tree(root: Path) -> None:
    hwmon = root / HWMON
    write_atomic(root / "sys/bus/i2c/drivers/ina3221/7-0040/name", "ina3221\n")
    for ch, label, _mv, _share in CHANNELS:
        write_atomic(hwmon / f"in{ch}_label", f"{label}\n")
    write_atomic(hwmon / "in7_label", "sum of shunt voltages\n")
    write_atomic(hwmon / "in7_input", "0\n")
    write_atomic(hwmon / "update_interval", "1100\n")
    write_atomic(root / "proc/device-tree/model", MODEL + "\x00")
    write_atomic(root / "etc/nv_tegra_release", L4T)
    write_atomic(root / "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    write_atomic(root / "sys/class/thermal/thermal_zone0/temp", f"{THERMAL_MC}\n")
    for cpu in range(6):
        freq = root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
        write_atomic(freq / "scaling_governor", "schedutil\n")
        write_atomic(freq / "scaling_cur_freq", f"{CPU_KHZ[0]}\n")
        write_atomic(freq / "scaling_min_freq", "115200\n")
        write_atomic(freq / "scaling_max_freq", f"{CPU_KHZ[1]}\n")
    gpu = root / "sys/devices/gpu.0/devfreq/17000000.gv11b"
    write_atomic(gpu / "cur_freq", f"{GPU_HZ[0]}\n")
    write_atomic(gpu / "max_freq", f"{GPU_HZ[1]}\n")
    write_atomic(gpu / "governor", "nvhost_podgov\n")


def _install_tools(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        body = (BIN / tool).read_text().split("\n", 1)[1]
        target = bin_dir / tool
        target.write_text(f"#!{sys.executable}\n{body}")
        target.chmod(0o755)


def make_fakeboard(folder: Path | str, w0: float, slope: float) -> dict[str, str]:
    """Build a fake Jetson in ``folder`` whose power ramps from ``w0`` W now at ``slope`` W/s.

    Args:
        folder: An empty folder (a test's ``tmp_path``).
        w0: Board power (W) at the moment of the call.
        slope: W per second.

    Returns:
        Environment variables to add to ``os.environ`` for a subprocess: ``PATH`` (fake tools
        first), ``EDGEKIT_FAKEBOARD`` and ``EDGEKIT_SYSFS_ROOT``.
    """
    folder = Path(folder)
    ramp = {"t0": time.monotonic(), "w0": float(w0), "slope": float(slope)}
    write_atomic(folder / "ramp.json", json.dumps(ramp))
    root = folder / "sysfs"
    _write_static_tree(root)
    _write_ina3221(root, w0)
    _install_tools(folder / "bin")
    return {
        "PATH": f"{folder / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "EDGEKIT_FAKEBOARD": str(folder),
        "EDGEKIT_SYSFS_ROOT": str(root),
    }


class SysfsWriter:
    """A thread rewriting the fake INA3221 currents from the ramp; ``stop()`` or use as a context.

    Every write is logged (``writes``: monotonic time the files were complete, watts), so a test can
    compare a sampler with what the files really held (:meth:`held_w`, :meth:`energy_j`): on a loaded
    host the thread can stall for tens of ms and the files then lag the ramp, which is the harness's
    lag, not the sampler's error.
    """

    def __init__(self, folder: Path, interval_s: float) -> None:
        self.root = folder / "sysfs"
        self.ramp = load_ramp(folder)
        self.interval_s = interval_s
        self.writes: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-ina3221", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            # The value holds until the next write: centre it on that span so the error averages out.
            watts = ramp_w(self.ramp, time.monotonic() + self.interval_s / 2)
            _write_ina3221(self.root, watts)
            self.writes.append((time.monotonic(), watts))
            self._stop.wait(self.interval_s)

    def held_w(self, t: float) -> float:
        """The watts the files held at monotonic time ``t`` (the last write before it)."""
        i = bisect.bisect_right([w[0] for w in self.writes], t) - 1
        return self.writes[max(i, 0)][1]

    def energy_j(self, t0: float, t1: float) -> float:
        """Exact energy (J) of what the files held over ``[t0, t1]`` (piecewise constant)."""
        times = [w[0] for w in self.writes]
        edges = [t0, *(t for t in times if t0 < t < t1), t1]
        return sum((b - a) * self.held_w(a) for a, b in zip(edges, edges[1:], strict=False))

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> SysfsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sysfs_writer(folder: Path | str, interval_s: float) -> SysfsWriter:
    """Keep ``<folder>/sysfs``'s INA3221 files following the ramp, rewritten every ``interval_s``.

    The static parts (model, L4T release, thermal, cpufreq, devfreq) are (re)written first, so this
    also works on a folder :func:`make_fakeboard` did not build the tree in.
    """
    folder = Path(folder)
    _write_static_tree(folder / "sysfs")
    return SysfsWriter(folder, interval_s)


def remove_tool(folder: Path | str, tool: str) -> None:
    """Take one fake tool off the board (a "tool missing" case)."""
    (Path(folder) / "bin" / tool).unlink(missing_ok=True)
