"""Run commands and move files on a device: one interface for this host and for boards over SSH.

Every transport takes commands as an argv list, never a shell string: a remote transport joins it
with ``shlex.join`` so each argument is quoted exactly once. Results and errors are the same whatever
the transport: :class:`LocalTransport` here, :class:`~edgekit.device.ssh.SSHTransport` for a board.

Every command runs in its own process group (session), so a timeout, Ctrl-C or a stopped background
process (a power sampler, a long engine build) takes its children with it: nothing is left running
on the device.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from edgekit.core.errors import DeviceError, RemoteCommandError
from edgekit.core.files import sha256_file

LineCallback = Callable[[str], None]


@dataclass(frozen=True)
class CommandResult:
    """What a command did.

    Attributes:
        argv: The command as run.
        exit_code: Its exit status (negative = killed by that signal).
        stdout: Everything it printed on stdout.
        stderr: Everything it printed on stderr.
        duration: Wall seconds from start to exit.
    """

    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_code == 0

    def tail(self, n: int = 10) -> str:
        """Return the last ``n`` lines of stderr (of stdout if stderr is empty), progress lines excluded."""
        text = self.stderr if self.stderr.strip() else self.stdout
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("@progress")]
        return "\n".join(lines[-n:])


@runtime_checkable
class Transport(Protocol):
    """Where commands run and files live: this host (:class:`LocalTransport`) or a board over SSH.

    Attributes:
        name: Short label for messages (``"local"``, ``"ssh://user@host"``).
        default_python: The Python interpreter to run runners with on that side.
    """

    name: str
    default_python: str

    def run(
        self,
        argv: list[str],
        timeout: float | None = None,
        on_stderr_line: LineCallback | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> CommandResult:
        """Run ``argv``; stream stderr lines; raise on non-zero exit if ``check``.

        ``env`` adds variables, ``cwd`` sets the folder; a timeout or Ctrl-C kills its process group.
        """
        ...

    def start(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> Background:
        """Start ``argv`` in the background in its own process group; stop it with the handle."""
        ...

    def which(self, program: str) -> str | None:
        """Return where ``program`` is on the device's PATH, or ``None``."""
        ...

    def monotonic(self) -> float:
        """Read the device's monotonic clock (the clock runners and samplers stamp with), in seconds."""
        ...

    def put(self, local: str | Path, remote: str) -> None:
        """Copy a local file to ``remote`` (parent folders are created)."""
        ...

    def get(self, remote: str, local: str | Path) -> None:
        """Copy ``remote`` to a local file."""
        ...

    def mkdtemp(self) -> str:
        """Create a fresh work folder on the device and return its path."""
        ...

    def remove(self, path: str) -> None:
        """Delete a file or folder on the device (missing is fine)."""
        ...

    def sha256(self, remote_path: str) -> str:
        """Return the hex sha256 of a file on the device."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...

    def __enter__(self) -> Transport: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Background(Protocol):
    """A process started with :meth:`Transport.start`.

    Attributes:
        argv: The command as started.
    """

    argv: list[str]

    def alive(self) -> bool:
        """True while the process runs."""
        ...

    def stop(self, grace: float = 5.0) -> CommandResult:
        """SIGTERM its process group, SIGKILL after ``grace`` seconds; return what it printed."""
        ...


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env(env: dict[str, str] | None) -> dict[str, str]:
    """Validate environment variable names (a name is never quoted, so it must be a plain identifier).

    Raises:
        ValueError: A name that is not ``[A-Za-z_][A-Za-z0-9_]*``.
    """
    for key in env or {}:
        if not ENV_NAME.fullmatch(key):
            raise ValueError(f"invalid environment variable name {key!r}")
    return {k: str(v) for k, v in (env or {}).items()}


class LocalTransport:
    """Run on this host with :mod:`subprocess`; "remote" paths are ordinary local paths.

    Args:
        root: Folder under which :meth:`mkdtemp` creates work folders (default: the system temp dir).
        env: Variables every command gets on top of this process's environment (the "device's" own).

    Example:
        >>> with LocalTransport() as t:
        ...     t.run(["python3", "-c", "print(6 * 7)"]).stdout.strip()
        '42'
    """

    name = "local"
    default_python = sys.executable

    def __init__(self, root: str | Path | None = None, env: dict[str, str] | None = None) -> None:
        self.root = str(root) if root is not None else None
        self.env = check_env(env)

    def run(
        self,
        argv: list[str],
        timeout: float | None = None,
        on_stderr_line: LineCallback | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` (a list, no shell), streaming stderr lines while it runs.

        Raises:
            DeviceError: The program does not exist or the command timed out.
            RemoteCommandError: Non-zero exit and ``check`` is true.
        """
        argv = [str(a) for a in argv]
        start = time.monotonic()
        proc = self._popen(argv, env, cwd)
        try:
            out, err = _collect(proc, timeout, on_stderr_line, argv)
        except BaseException:  # Ctrl-C included: the whole group goes, nothing keeps running
            _kill(proc)
            raise
        result = CommandResult(argv, proc.returncode, out, err, time.monotonic() - start)
        if check and not result.ok:
            raise RemoteCommandError(result)
        return result

    def start(
        self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None
    ) -> LocalProcess:
        """Start ``argv`` in its own session; its output is collected until :meth:`LocalProcess.stop`."""
        argv = [str(a) for a in argv]
        return LocalProcess(argv, self._popen(argv, env, cwd))

    def which(self, program: str) -> str | None:
        """Look ``program`` up on PATH."""
        return shutil.which(program)

    def monotonic(self) -> float:
        """This host's monotonic clock."""
        return time.monotonic()

    def _popen(self, argv: list[str], env: dict[str, str] | None, cwd: str | None) -> subprocess.Popen:
        extra = {**self.env, **check_env(env)}
        full_env = {**os.environ, **extra} if extra else None
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
                env=full_env,
                cwd=cwd,
            )
        except OSError as exc:
            what = f"folder {cwd!r}" if cwd and not Path(cwd).is_dir() else repr(argv[0])
            raise DeviceError(
                f"cannot run {argv[0]!r} on {self.name} ({what}: {exc.strerror})",
                "check it is installed and on PATH",
            ) from exc

    def put(self, local: str | Path, remote: str) -> None:
        """Copy a file (atomically: temp name, then rename)."""
        Path(remote).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{remote}.part"
        shutil.copyfile(local, tmp)
        Path(tmp).replace(remote)

    def get(self, remote: str, local: str | Path) -> None:
        """Copy a file back."""
        if not Path(remote).is_file():
            raise DeviceError(f"{remote} does not exist on {self.name}", "the command did not write it")
        self.put(remote, str(local))

    def mkdtemp(self) -> str:
        """Create a work folder named ``edgekit-*``."""
        return tempfile.mkdtemp(prefix="edgekit-", dir=self.root)

    def remove(self, path: str) -> None:
        """Delete a file or a folder tree."""
        p = Path(path)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

    def sha256(self, remote_path: str) -> str:
        """Hash a file."""
        return sha256_file(remote_path)

    def close(self) -> None:
        """Nothing to release locally."""

    def __enter__(self) -> LocalTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalProcess:
    """A background process on this host (see :meth:`LocalTransport.start`)."""

    def __init__(self, argv: list[str], proc: subprocess.Popen) -> None:
        self.argv = argv
        self._proc = proc
        self._start = time.monotonic()
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=_pump, args=(proc.stdout, self._out, None), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, self._err, None), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def alive(self) -> bool:
        """True while it runs."""
        return self._proc.poll() is None

    def stop(self, grace: float = 5.0) -> CommandResult:
        """Terminate the process group (then kill it after ``grace`` s) and return its output."""
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self._proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _kill(self._proc)
        _reap_group(self._proc.pid)
        for reader in self._readers:
            reader.join(timeout=5)
        return CommandResult(
            self.argv,
            self._proc.returncode,
            "".join(self._out),
            "".join(self._err),
            time.monotonic() - self._start,
        )


def _reap_group(pgid: int) -> None:
    # Children that outlived the leader (e.g. a sampler's tegrastats) still belong to the group.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _collect(
    proc: subprocess.Popen, timeout: float | None, on_line: LineCallback | None, argv: list[str]
) -> tuple[str, str]:
    """Read stdout and stderr concurrently (no pipe deadlock), stderr line by line; enforce timeout."""
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=_pump, args=(proc.stdout, out, None), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err, on_line), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill(proc)
        raise DeviceError(
            f"command {argv[0]!r} timed out after {timeout:g} s on local "
            f"(last output: {''.join(err)[-300:].strip() or 'none'})",
            "raise the timeout, or lower iterations / min-seconds",
        ) from exc
    finally:
        for reader in readers:
            reader.join(timeout=5)
    return "".join(out), "".join(err)


def _pump(stream: IO[str], sink: list[str], on_line: LineCallback | None) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        if on_line is not None:
            try:
                on_line(line.rstrip("\n"))
            except Exception:  # noqa: BLE001 - a broken display must not stall the pipe and the command
                on_line = None
    stream.close()


def _kill(proc: subprocess.Popen) -> None:
    # The whole process group: a runner may have spawned threads/children that hold the pipes open.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


class DeviceSession:
    """One connection to a run's device, opened on first use and shared by every stage until :meth:`close`.

    ``with session() as transport:`` hands out the same open transport each time (a stage's ``with``
    does not close it), so ``--calibrator auto``'s candidates, a device build and the bench use one SSH
    session instead of opening their own. Closing stops anything still running on the device.

    Example:
        >>> session = DeviceSession(LocalTransport)
        >>> with session() as a, session() as b:
        ...     a is b
        True
        >>> session.close()
    """

    def __init__(
        self, factory: Callable[[], Transport], on_open: Callable[[Transport], None] | None = None
    ) -> None:
        self._factory = factory
        self._on_open = on_open  # told the transport once it is open (the run records which device)
        self._transport: Transport | None = None

    def __call__(self) -> DeviceSession:
        """Stand in for a transport factory: ``with session() as transport``."""
        return self

    def __enter__(self) -> Transport:
        if self._transport is None:
            self._transport = self._factory()
            if self._on_open is not None:
                self._on_open(self._transport)
        return self._transport

    def __exit__(self, *exc: object) -> None:
        """Keep the connection for the next stage (:meth:`close` ends it)."""

    def close(self) -> None:
        """Close the connection if one was opened."""
        if self._transport is not None:
            transport, self._transport = self._transport, None
            transport.close()
