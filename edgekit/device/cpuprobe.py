"""A board's CPU, read from the board itself (``cpu: {features: probe}`` in a target YAML).

The INT8 form ONNX Runtime needs depends on the device's instruction set (VNNI / ``sdot`` or not), and a
target YAML may not know it. With ``probe``, a run asks the board once, when it starts: ``uname -m`` and
``/proc/cpuinfo``, read through the run's device session (and the session closed again, so a sweep's
board lease is held only for the read). The facts are parsed as the board's runner parses them
(:func:`edgekit.runners.runcore.describe_cpu`), and the run's target carries them with their source.
"""

from __future__ import annotations

from typing import Any

from edgekit.core.errors import DeviceError

#: Seconds each of the two reads may take (times the connection's patience on emulated boards).
PROBE_TIMEOUT_S = 30.0


def probe_cpu(transport: Any) -> dict:
    """``{"arch", "model", "features", "int8_dot"}`` of the board ``transport`` reaches.

    Raises:
        DeviceError: The board has no ``uname`` or no readable ``/proc/cpuinfo``.
    """
    from edgekit.runners.runcore import describe_cpu

    arch = transport.run(["uname", "-m"], timeout=PROBE_TIMEOUT_S, check=False)
    info = transport.run(["cat", "/proc/cpuinfo"], timeout=PROBE_TIMEOUT_S, check=False)
    if not arch.ok or not arch.stdout.strip() or not info.ok:
        raise DeviceError(
            f"cannot read the CPU of {transport.name}: `uname -m` / `cat /proc/cpuinfo` failed "
            f"({(arch.tail(2) if not arch.ok else info.tail(2)) or 'no output'})",
            "state the board's CPU in its target YAML instead: cpu: {arch: aarch64, features: [asimd, ...]}",
        )
    return describe_cpu(info.stdout, arch.stdout)


def probed(target: Any, session: Any) -> Any:
    """``target`` with ``cpu.features: probe`` replaced by what its board reports (others unchanged).

    ``session`` is the run's :class:`~edgekit.device.transport.DeviceSession`; it is closed after the
    read and opens again when a stage next needs the board.
    """
    if target.cpu.features != "probe":
        return target
    with session() as transport:
        target = probed_on(target, transport)
    session.close()
    return target


def probed_on(target: Any, transport: Any) -> Any:
    """``target`` with ``cpu.features: probe`` replaced by what the board ``transport`` reaches reports."""
    if target.cpu.features != "probe":
        return target
    cpu = probe_cpu(transport)
    spec = target.cpu.model_copy(
        update={"arch": cpu["arch"], "features": cpu["features"], "source": f"probed on {transport.name}"}
    )
    return target.model_copy(update={"cpu": spec})


def record_cpu(record: Any, target: Any) -> None:
    """Write a probed CPU into the run record's target (what the YAML said was ``probe``)."""
    if target.cpu.source:
        record.target["cpu"] = {**target.cpu.model_dump(mode="json"), "source": target.cpu.source}
