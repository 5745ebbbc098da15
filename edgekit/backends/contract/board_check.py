"""A build's checks run on a board: the runtime's own kernels there judge the artifact, not this host's.

Most runtimes compute an artifact the same way on every CPU edgekit checked, so a build is checked on this
host. Where a runtime's host kernels cannot be trusted for a precision (MNN 3.6.1's x86 INT8 kernels give
different outputs from run to run on C2f detectors), the build can be judged where it will run: inside
:func:`checks_on`, a backend that supports it runs its FP32/detection check and its own sanity checks on
that board (pushing the model and the check inputs over the board's transport, running a small script
with the board's Python, fetching the outputs). The record names where the check ran.
"""

from __future__ import annotations

import contextlib
import posixpath
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BoardCheck:
    """Where a build's checks run instead of this host.

    Attributes:
        connect: Opens a transport to the board (a context manager with ``put``/``get``/``run``).
        python: The board's Python, which has the runtime.
        name: How the record names the board (``rk3588 simulator (qemu-user cortex-a76)``).
        timeout: Seconds one check run may take on the board.
    """

    connect: Callable[[], Any]
    python: str
    name: str
    timeout: float = 3600.0


_CURRENT: ContextVar[BoardCheck | None] = ContextVar("edgekit_board_check", default=None)


@contextlib.contextmanager
def checks_on(board: BoardCheck | None) -> Iterator[None]:
    """Run the builds inside this block with their checks on ``board`` (``None``: on this host)."""
    token = _CURRENT.set(board)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current() -> BoardCheck | None:
    """The board checks run on now, or ``None`` for this host."""
    return _CURRENT.get()


def where() -> str:
    """Where checks run now, as the record says it."""
    board = current()
    return board.name if board else "this host"


def run_on_board(
    board: BoardCheck, script: Path, files: list[Path], inputs: np.ndarray, args: list[str]
) -> dict[str, np.ndarray]:
    """Run ``script`` on the board over ``inputs`` (pushed with ``files``) and return the arrays it saved.

    The script is called as ``python script --inputs inputs.npy --out out.npz <args>`` from that folder
    (``files`` beside it, by name), and must write ``out.npz``. The folder is removed whatever happens.

    Raises:
        DeviceError (from the transport): the board is unreachable, the run failed or timed out.
    """
    with board.connect() as transport, tempfile.TemporaryDirectory(prefix="edgekit-check-") as tmp:
        work = transport.mkdtemp()
        try:
            for path in (script, *files):
                transport.put(path, posixpath.join(work, path.name))
            local_in = Path(tmp) / "inputs.npy"
            np.save(local_in, np.ascontiguousarray(inputs, dtype=np.float32))
            transport.put(local_in, posixpath.join(work, "inputs.npy"))
            argv = [board.python, script.name, "--inputs", "inputs.npy", "--out", "out.npz", *args]
            transport.run(argv, timeout=board.timeout, cwd=work)
            local_out = Path(tmp) / "out.npz"
            transport.get(posixpath.join(work, "out.npz"), local_out)
            with np.load(local_out) as data:
                return {k: data[k] for k in data.files}
        finally:
            transport.remove(work)
