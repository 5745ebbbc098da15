"""A target run on its board's simulator (``--device sim``).

The same target, reached over SSH at the simulator's address, with the emulated core's CPU facts and a
timing loop sized for an emulator.
"""

from __future__ import annotations

from typing import Any

from edgekit.core.errors import ConfigError

#: The timing loop on an emulated board: its time is emulator time (60-800x a real core's, per
#: ../shared/research/arm-emulation.md), so a short loop says all it can.
SIM_RUNTIME = {"warmup": 2, "min_warmup_s": 0.0, "iterations": 10, "min_seconds": 0.0}


def sim_target(target: Any) -> Any:
    """``target`` pointed at the simulator of its board, marked as emulated.

    Raises:
        ConfigError: No simulator stands for the target's board.
    """
    from edgekit.core.config import CpuSpec, SSHConnection
    from edgekit.device.sim.board import BoardSim
    from edgekit.device.sim.profiles import PROFILES, profile

    try:
        profile(target.board)
    except ConfigError:
        sims = ", ".join(f"{p.name} ({', '.join(p.boards)})" for p in PROFILES.values())
        raise ConfigError(
            f"--device sim emulates the boards {sims}; target '{target.name}' is a {target.board}",
            "use a target of one of those boards (rpi4-ncnn, rk3588-mnn), or --device local",
        ) from None
    sim = BoardSim(target.board)
    conn = SSHConnection(**sim.connection().to_connection())
    runtime = target.runtime.model_copy(update={**SIM_RUNTIME, "governor": None, "cpu_affinity": None})
    power = target.power.model_copy(update={"sensor": "none", "idle_s": 0.0})
    cpu = CpuSpec(
        arch="aarch64", features=list(sim.profile.features), source=f"the emulated {sim.profile.name}'s core"
    )
    return target.model_copy(
        update={
            "connection": conn,
            "runtime": runtime,
            "power": power,
            "cpu": cpu,
            "emulator": f"qemu-user {sim.profile.cpu}",
        }
    )


def transport_factory(target: Any):  # noqa: ANN201 - a zero-argument callable giving a transport
    """Start the target's simulator (if it is not running) and connect to it."""
    from edgekit.device.sim.board import BoardSim
    from edgekit.device.ssh import SSHTransport

    def connect() -> Any:
        BoardSim(target.board).start()
        return SSHTransport.from_connection(target.connection)

    return connect


def board_check(name: str) -> Any:
    """A :class:`~edgekit.backends.contract.board_check.BoardCheck` on the simulator ``name``.

    The simulator is started when a check first needs it.
    """
    from edgekit.backends.contract.board_check import BoardCheck
    from edgekit.core.config import SSHConnection
    from edgekit.device.sim.board import BoardSim
    from edgekit.device.ssh import SSHTransport

    sim = BoardSim(name)
    conn = SSHConnection(**sim.connection().to_connection())

    def connect() -> Any:
        sim.start()
        return SSHTransport.from_connection(conn)

    return BoardCheck(connect, conn.python, f"{sim.profile.name} simulator (qemu-user {sim.profile.cpu})")
