"""A board's CPU, read from the board itself when a run starts.

The INT8 form ONNX Runtime needs depends on the device's instruction set (VNNI / ``sdot`` or not), and a
target YAML may not know it, or be wrong. A run on a board (over SSH, or an emulated one) asks the board
once, when it starts: ``uname -m`` and ``/proc/cpuinfo``, read through the run's device session (closed
again after, so a sweep's board lease is held only for the read). The facts are parsed as the board's
runner parses them (:func:`edgekit.runners.runcore.describe_cpu`), and the run's target carries them with
their source. The YAML's ``cpu:`` is the fallback for a board that does not answer then (the source says
so); ``cpu: {features: probe}`` states nothing, so there an unanswered probe stops the run. A run on this
host (``--device local``, or a local connection) is not probed unless its YAML says ``probe``: its
target's ``cpu:`` stands. In a sweep the read leases a board of the kind for a moment; the bench may then
get another board of that kind (a fleet's boards of one kind are taken to be the same machine).
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


def on_a_board(target: Any, device: str | None) -> bool:
    """Whether a run of ``target`` (``--device``) has its CPU probed at its start.

    ``cpu: {features: probe}`` always is (on this host too). Otherwise a board over SSH or an emulated
    one is, unless it is an MCU (``limits.core`` or a serial runner: the SSH host only drives it).
    """
    if target.cpu.features == "probe":
        return True
    if device == "local" or target.cpu.features == "host":
        return False
    if target.limits.core or target.runtime.serial is not None:
        return False
    return device == "sim" or target.connection.type == "ssh"


def probed(target: Any, session: Any) -> Any:
    """``target`` with the CPU its board reports; the YAML's when the board does not answer (see above).

    ``session`` is the run's :class:`~edgekit.device.transport.DeviceSession`; it is closed after the
    read and opens again when a stage next needs the board.

    Raises:
        HostKeyError: The board's host key is not the known one (never a fallback).
        DeviceError: ``cpu: {features: probe}`` and the board did not answer.
    """
    from edgekit.core.errors import HostKeyError

    try:
        with session() as transport:
            found = probed_on(target, transport)
    except HostKeyError:
        raise
    except DeviceError as exc:
        if target.cpu.features == "probe":
            raise
        stated = target.cpu.source or str(target.source or target.name)
        why = f"stated in {stated}; the board did not answer the CPU probe: {exc.message}"
        return target.model_copy(update={"cpu": target.cpu.model_copy(update={"source": why})})
    finally:
        session.close()
    return found


def probed_on(target: Any, transport: Any) -> Any:
    """``target`` with the CPU the board ``transport`` reaches reports (``source``: probed on it)."""
    cpu = probe_cpu(transport)
    spec = target.cpu.model_copy(
        update={"arch": cpu["arch"], "features": cpu["features"], "source": f"probed on {transport.name}"}
    )
    return target.model_copy(update={"cpu": spec})


def record_cpu(record: Any, target: Any) -> None:
    """Write the CPU the run used, and its source, into the run record's target."""
    stated = record.target.get("cpu")
    record.target["cpu"] = {**target.cpu.model_dump(mode="json"), "source": target.cpu.source}
    if stated and stated.get("features") != target.cpu.features:
        record.target["cpu"]["stated"] = stated  # what the YAML said, where the board says otherwise


def cpu_line(target: Any, device: str | None) -> str:
    """The device CPU a run quantizes and checks for (``--dry-run``), and where that comes from."""
    from edgekit.core.config import device_cpu

    cpu, source = device_cpu(target)
    if cpu is None:
        line = source
    else:
        features = ", ".join(cpu["features"]) or "no listed features"
        line = f"{cpu['arch']} [{features}], int8 {cpu['int8_dot']} ({source})"
    if on_a_board(target, device) and target.cpu.features != "probe":
        line += "; read from the board when the run starts (this is the fallback)"
    return line
