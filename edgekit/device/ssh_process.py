"""One command on a board over SSH: its channel, its output and its remote process group.

Used by :class:`~edgekit.device.ssh.SSHTransport` (``run`` waits on it; ``start`` pumps it in a thread);
a timeout, Ctrl-C or ``stop`` kills the whole remote process group the wrapper reported.
"""

from __future__ import annotations

import codecs
import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

from edgekit.core.errors import DeviceError, HostUnreachableError
from edgekit.device.transport import CommandResult, LineCallback

if TYPE_CHECKING:
    from edgekit.device.ssh import SSHTransport

_PGID_PREFIX = "@pgid "
_POLL_S = 0.01


class SSHProcess:
    """One command on the board: its channel, output and process group.

    Attributes:
        argv: The command as given.
        pgid: Its process group on the board once the wrapper reported it, else ``None``.
    """

    def __init__(self, transport: SSHTransport, argv: list[str], channel: Any) -> None:
        self.transport, self.argv, self.channel = transport, argv, channel
        self.pgid: int | None = None
        self._start = time.monotonic()
        self._out: list[str] = []
        self._err: list[str] = []
        self._partial = ""
        utf8 = codecs.getincrementaldecoder("utf-8")
        self._decoders = (utf8("replace"), utf8("replace"))
        self._thread: threading.Thread | None = None
        self._exit: int | None = None

    # -- reading -----------------------------------------------------------------------------------
    def wait(self, timeout: float | None, on_line: LineCallback | None = None) -> None:
        """Read output until the command exits.

        Raises:
            DeviceError: ``timeout`` passed (the caller kills the group).
            HostUnreachableError: The link died.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            got = self._drain(on_line)
            if not got and self.channel.exit_status_ready():
                break
            if deadline is not None and time.monotonic() > deadline:
                raise DeviceError(
                    f"command {self.argv[0]!r} timed out after {timeout:g} s on {self.transport.name} "
                    f"(last output: {''.join(self._err)[-300:].strip() or 'none'})",
                    "a slow board needs more time: raise connection.patience in the target YAML (it "
                    "multiplies every timeout; the board simulators use 20), or lower runtime.iterations",
                )
            if not got:
                self._check_link()
                time.sleep(_POLL_S)
        self._drain(on_line)
        self._flush_partial(on_line)
        self._exit = self.channel.recv_exit_status()
        if self._exit == -1:  # the channel closed without an exit status: sshd or the link went away
            self.transport._drop()
            raise HostUnreachableError(
                f"the connection to {self.transport.name} closed while {self.argv[0]!r} ran "
                "(sshd stopped or the link dropped)",
                "check the board and its sshd, then retry",
            )

    def _drain(self, on_line: LineCallback | None) -> bool:
        got = False
        while self.channel.recv_ready():
            self._out.append(self._decoders[0].decode(self.channel.recv(65536)))
            got = True
        while self.channel.recv_stderr_ready():
            self._feed_err(self._decoders[1].decode(self.channel.recv_stderr(65536)), on_line)
            got = True
        return got

    def _feed_err(self, text: str, on_line: LineCallback | None) -> None:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(line, on_line)

    def _flush_partial(self, on_line: LineCallback | None) -> None:
        if self._partial:
            self._line(self._partial, on_line)
            self._partial = ""

    def _line(self, line: str, on_line: LineCallback | None) -> None:
        if self.pgid is None and line.startswith(_PGID_PREFIX):
            with contextlib.suppress(ValueError):
                self.pgid = int(line[len(_PGID_PREFIX) :])
                return
        self._err.append(line + "\n")
        if on_line is not None:
            try:
                on_line(line)
            except Exception:  # noqa: BLE001 - a broken display must not stall the command
                pass

    def _check_link(self) -> None:
        transport = self.channel.get_transport()
        if transport is None or not transport.is_active():
            self.transport._drop()
            raise HostUnreachableError(
                f"lost the link to {self.transport.name} while {self.argv[0]!r} ran "
                f"(no answer for {self.transport.dead_after_s:g} s)",
                "check the board's power and network; the device-side deadline stops what was left running, "
                "then retry",
            )

    def result(self) -> CommandResult:
        """The finished command's result."""
        code = self._exit if self._exit is not None else -1
        return CommandResult(
            self.argv, code, "".join(self._out), "".join(self._err), time.monotonic() - self._start
        )

    # -- background --------------------------------------------------------------------------------
    def pump_in_background(self) -> None:
        """Keep reading output in a thread (for :meth:`SSHTransport.start`)."""

        def pump() -> None:
            with contextlib.suppress(Exception):
                self.wait(None)

        self._thread = threading.Thread(target=pump, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.transport.connect_timeout
        while self.pgid is None and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(_POLL_S)

    def alive(self) -> bool:
        """True while the command runs."""
        return not self.channel.exit_status_ready() and not self.channel.closed

    def stop(self, grace: float = 5.0) -> CommandResult:
        """TERM the process group, KILL it after ``grace`` s, and return the output."""
        if self.alive():
            self.kill_group(grace)
        if self._thread is not None:
            self._thread.join(timeout=grace + 5)
        with contextlib.suppress(Exception):
            self.channel.close()
        return self.result()

    def kill_group(self, grace: float = 2.0) -> None:
        """Kill the command's process group on the board (best effort when the link is gone)."""
        if self.pgid is None:
            with contextlib.suppress(Exception):
                self.channel.close()
            return
        script = 'kill -TERM "-$1" 2>/dev/null || exit 0; i=0; while kill -0 "-$1" 2>/dev/null; do '
        script += f'i=$((i+1)); [ "$i" -gt {max(1, int(grace * 10))} ] && kill -KILL "-$1" 2>/dev/null; '
        script += "sleep 0.1; done; exit 0"
        with contextlib.suppress(Exception):
            killer = self.transport._open(["sh", "-c", script, "kill", str(self.pgid)], None, None)
            killer.wait(grace + 10)
        with contextlib.suppress(Exception):
            self.channel.close()
