"""The boards of a sweep, and the lease that lets one bench at a time onto each.

Every board is one unit of a Ray custom resource, ``edgekit-board:<name>`` (:func:`board_resource`):
declared by the embedded Ray a sweep starts, or by ``ray start --resources`` on a cluster. A bench leases
its board when it first needs the device and returns it when its run's device session closes; while it
holds the board, a :class:`BoardHold` actor holds the board's unit, so Ray's scheduler itself keeps a
second bench off it, from this sweep or any other driver on the cluster. The host stages of other items
go on beside it. The pool (a Ray actor, the sweep's one owner of board state) picks which board of a kind
a bench gets; a lease waits until one is free. A board whose link dies is marked dead with the reason,
and never leased again in that sweep; a kind with no live board left fails its items with those reasons.

Kinds: the fleet's boards of a target's ``board:``; else the one board a target's own YAML names; this
host for ``device: local`` (its timings too are measured one at a time); the emulated board of its kind
for ``device: sim``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from edgekit.core.errors import DeviceError

LOCAL_KIND = "local"
RESOURCE_PREFIX = "edgekit-board:"


def board_resource(name: str) -> str:
    """The Ray custom resource that is board ``name`` (one unit per board)."""
    return RESOURCE_PREFIX + name


class BoardHold:
    """Holds one board's resource unit for its lifetime (a Ray actor created with that resource).

    Its creation waits in Ray's scheduler until the unit is free; killing it gives the unit back.
    """

    def ready(self) -> bool:
        """Answered once Ray has placed the actor, i.e. granted the board's unit."""
        return True


@dataclass(frozen=True)
class Board:
    """One board: its name, its kind and how to reach it.

    ``connection`` holds an SSH connection's fields (``None`` for this host); ``sim`` names an emulated board.
    """

    name: str
    kind: str
    connection: dict[str, Any] | None = None
    sim: str | None = None


def board_kind(target: Any, device: str | None, fleet_kinds: set[str]) -> str:
    """The kind of board an item of ``target`` benches on."""
    if device == "local" or target.connection.type == "local":
        return LOCAL_KIND
    if device == "sim":
        return f"sim:{target.board}"
    if target.board in fleet_kinds:
        return target.board
    return f"{target.board}@{target.connection.host}:{target.connection.port}"


def boards_for(kind: str, target: Any, fleet: Any) -> list[Board]:
    """The boards of ``kind``: the fleet's, the target's own, this host or a simulator."""
    if kind == LOCAL_KIND:
        return [Board(LOCAL_KIND, kind)]
    if kind.startswith("sim:"):
        return [Board(kind, kind, sim=target.board)]
    if fleet is not None and any(b.board == kind for b in fleet.boards):
        return [Board(b.name, kind, b.connection.model_dump()) for b in fleet.boards if b.board == kind]
    return [Board(kind, kind, target.connection.model_dump())]


class BoardPool:
    """The sweep's boards (a Ray actor: ``ray.remote(BoardPool)``); async so many leases can wait."""

    def __init__(self, boards: list[Board]) -> None:
        self.boards = {b.name: b for b in boards}
        self.free = {b.name for b in boards}
        self.dead: dict[str, str] = {}
        self.holder: dict[str, str] = {}
        self.leases: list[dict[str, Any]] = []  # every lease: board, item, from, to (seconds, this clock)
        self.changed = asyncio.Condition()

    async def acquire(self, kind: str, item: str) -> tuple[Board | None, str]:
        """A free live board of ``kind`` (waiting for one), or ``None`` and why, when none is left alive."""
        async with self.changed:
            while True:
                live = [n for n, b in self.boards.items() if b.kind == kind and n not in self.dead]
                if not live:
                    why = "; ".join(f"{n}: {r}" for n, r in self.dead.items() if self.boards[n].kind == kind)
                    return None, why or f"no board of kind {kind}"
                free = sorted(n for n in live if n in self.free)
                if free:
                    self.free.discard(free[0])
                    self.holder[free[0]] = item
                    self.leases.append({"board": free[0], "item": item, "from": time.time(), "to": None})
                    return self.boards[free[0]], ""
                await self.changed.wait()

    async def release(self, name: str) -> None:
        """Give a board back (a dead one stays out)."""
        async with self.changed:
            self._ended(name)
            if name not in self.dead:
                self.free.add(name)
            self.changed.notify_all()

    async def mark_dead(self, name: str, reason: str) -> bool:
        """Take a board out for the rest of the sweep; ``True`` when a live board of its kind remains."""
        async with self.changed:
            self.dead[name] = reason
            self.free.discard(name)
            self._ended(name)
            self.changed.notify_all()
            kind = self.boards[name].kind
            return any(b.kind == kind and n not in self.dead for n, b in self.boards.items())

    def _ended(self, name: str) -> None:
        if self.holder.pop(name, None) is not None:
            open_ = [lease for lease in self.leases if lease["board"] == name and lease["to"] is None]
            if open_:
                open_[-1]["to"] = time.time()

    async def timeline(self) -> list[dict[str, Any]]:
        """Every lease so far: which item held which board, from when to when (epoch seconds)."""
        return [dict(lease) for lease in self.leases]

    async def status(self) -> dict[str, Any]:
        """Each board's state: ``free``, ``benching <item>`` or ``dead: <reason>``."""
        out = {}
        for n in self.boards:
            held = f"benching {self.holder[n]}" if n in self.holder else "free"
            out[n] = f"dead: {self.dead[n]}" if n in self.dead else held
        return out


def _leased(inner: Any, release: Any, board: Board) -> Any:
    """``inner`` (the board's own transport, its type kept) with ``close`` also returning the board."""
    close = inner.close

    def close_and_release() -> None:
        try:
            close()
        finally:
            release()

    inner.close = close_and_release
    if board.name not in inner.name:
        inner.name = f"{board.name} ({inner.name})"
    return inner


class Lease:
    """A run's transport factory on a sweep: it leases a board of ``kind`` from the pool when called.

    ``board`` is the board last leased (the sweep marks it dead when its link died).
    """

    def __init__(self, pool: Any, kind: str, item: str, target: Any) -> None:
        self.pool, self.kind, self.item, self.target = pool, kind, item, target
        self.board: Board | None = None

    def __call__(self) -> Any:
        """Lease a board (waiting for a free one) and connect to it."""
        import ray

        board, why = ray.get(self.pool.acquire.remote(self.kind, self.item))
        if board is None:
            raise DeviceError(
                f"no live board of kind {self.kind} is left for {self.item}: {why}",
                "bring the boards back (check their power and network), then re-run the sweep: it skips "
                "the items that finished",
            )
        self.board = board
        hold = None
        try:
            hold = (
                ray.remote(num_cpus=0)(BoardHold).options(resources={board_resource(board.name): 1}).remote()
            )
            ray.get(hold.ready.remote())  # Ray grants the board's unit (waits while another driver holds it)
            inner = _connect(board, self.target)
        except BaseException:
            self._give_back(ray, hold, board)
            raise
        return _leased(inner, lambda: self._give_back(ray, hold, board), board)

    def _give_back(self, ray: Any, hold: Any, board: Board) -> None:
        if hold is not None:
            ray.kill(hold)
        ray.get(self.pool.release.remote(board.name))


def _connect(board: Board, target: Any) -> Any:
    if board.kind == LOCAL_KIND:
        from edgekit.device.transport import LocalTransport

        return LocalTransport()
    if board.sim:
        from edgekit.device.sim.target import transport_factory

        return transport_factory(target)()
    from edgekit.core.config import SSHConnection
    from edgekit.device.ssh import SSHTransport

    return SSHTransport.from_connection(SSHConnection(**(board.connection or {})))
