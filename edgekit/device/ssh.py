"""Reach a board over SSH (paramiko): the :class:`~edgekit.device.transport.Transport` of real devices.

What it guarantees, whatever the board:

- **Keys only, host keys checked.** Authentication uses the target's ``key_file`` (or the SSH agent);
  passwords are never read. The board's host key must already be in the target's ``known_hosts``:
  an unknown key or a changed one is a :class:`~edgekit.core.errors.HostKeyError` carrying the key's
  SHA256 fingerprint and how to accept it deliberately. Nothing is ever auto-accepted.
- **Bounded waiting.** Connecting has a timeout and a few retries with backoff, then
  :class:`~edgekit.core.errors.HostUnreachableError`. While a command runs, keepalives plus the socket's
  ``TCP_USER_TIMEOUT`` turn a dead link into an error within ``dead_after_s`` seconds.
- **One quoting.** A command is an argv list joined with :func:`shlex.join` exactly once. It runs as
  ``env K=V... setsid -w sh -c WRAP edgekit CWD ARGV...``, where ``WRAP`` (a constant) prints the new
  process group id on stderr, changes folder and execs the argv: every argument reaches the
  program as one untouched string, spaces, quotes and ``;`` included.
- **Nothing left running.** On a timeout, Ctrl-C, or :meth:`SSHTransport.close`, the command's whole
  remote process group is killed (TERM, then KILL). Device-side helpers also carry their own deadline,
  for the case where the link is gone and no kill can be sent.
- **Work folders are the agent's.** :meth:`SSHTransport.mkdtemp` makes them with ``mktemp -d`` under the
  target's ``workdir``; :meth:`SSHTransport.remove` refuses any path outside them.
- **Uploads land whole.** SFTP writes ``<path>.part`` and renames it; a full disk or an unwritable
  folder is one :class:`~edgekit.core.errors.DeviceError` naming the path, with the partial file removed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import posixpath
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Any

from edgekit.core.errors import (
    ConfigError,
    DeviceError,
    HostKeyError,
    HostUnreachableError,
    MissingExtraError,
    RemoteCommandError,
)
from edgekit.device.ssh_process import SSHProcess
from edgekit.device.transport import CommandResult, LineCallback, check_env

WRAP = 'echo "@pgid $$" >&2; cd "$1" || exit 125; shift; exec "$@"'
"""The remote wrapper: report the process group, enter the folder, become the command."""


def _paramiko() -> Any:
    try:
        import paramiko
    except ImportError as exc:
        raise MissingExtraError(
            "the SSH agent needs paramiko, which is not installed", "pip install 'edgekit[ssh]'"
        ) from exc
    # Every paramiko failure becomes one edgekit error with a hint; its own tracebacks would be noise.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    return paramiko


def fingerprint(key: Any) -> str:
    """``SHA256:...`` fingerprint of a paramiko public key, as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """The name a host has in known_hosts (``[host]:port`` for ports other than 22)."""
    return host if port == 22 else f"[{host}]:{port}"


class SSHTransport:
    """Run commands and move files on a board over SSH.

    Args:
        host: Board address or name.
        user: Login user.
        port: SSH port.
        key_file: Private key (``~`` expanded); ``None`` = the running SSH agent's keys only.
        known_hosts: File the host key is checked against (must exist).
        workdir: Folder on the board under which work folders are made.
        python: Interpreter on the board for runners.
        connect_timeout: Seconds per connection attempt.
        retries: Connection attempts before giving up.
        dead_after_s: Seconds of silence from a dead link before a command fails.
        patience: Multiplies every command timeout: a slow board (an emulated one) gets more time.

    Example:
        >>> t = SSHTransport("10.0.0.7", "nvidia", key_file="~/.ssh/id_ed25519")  # doctest: +SKIP
        >>> t.run(["uname", "-m"]).stdout.strip()  # doctest: +SKIP
        'aarch64'
    """

    def __init__(
        self,
        host: str,
        user: str,
        *,
        port: int = 22,
        key_file: str | None = "~/.ssh/id_ed25519",
        known_hosts: str = "~/.ssh/known_hosts",
        workdir: str = "/tmp",
        python: str = "python3",
        connect_timeout: float = 10.0,
        retries: int = 3,
        dead_after_s: float = 8.0,
        patience: float = 1.0,
    ) -> None:
        self.host, self.user, self.port = host, user, port
        self.key_file = str(Path(key_file).expanduser()) if key_file else None
        self.known_hosts = str(Path(known_hosts).expanduser())
        self.workdir = workdir
        self.default_python = python
        self.connect_timeout, self.retries, self.dead_after_s = connect_timeout, max(1, retries), dead_after_s
        self.patience = max(1.0, float(patience))
        self.name = f"ssh://{user}@{known_hosts_name(host, port)}"
        self._client: Any = None
        self._sftp: Any = None
        self._workdirs: set[str] = set()
        self._background: list[SSHProcess] = []
        self._lock = threading.Lock()

    @classmethod
    def from_connection(cls, conn: Any) -> SSHTransport:
        """Build from a target's ``connection:`` block (:class:`~edgekit.core.config.SSHConnection`)."""
        return cls(
            conn.host,
            conn.user,
            port=conn.port,
            key_file=conn.key_file,
            known_hosts=conn.known_hosts,
            workdir=conn.workdir,
            python=conn.python,
            connect_timeout=conn.connect_timeout,
            retries=conn.retries,
            dead_after_s=conn.dead_after_s,
            patience=conn.patience,
        )

    # -- connection --------------------------------------------------------------------------------
    def connect(self) -> Any:
        """Connect (once; later calls reuse the connection while it is alive) and return the client.

        Raises:
            ConfigError: The key file or known_hosts file does not exist.
            HostKeyError: The board's host key is unknown or changed.
            HostUnreachableError: No connection after the retries.
            DeviceError: The board refused the key.
        """
        with self._lock:
            if self._client is not None and self._alive():
                return self._client
            self._drop()
            self._client = self._connect_with_retries()
            return self._client

    def _alive(self) -> bool:
        transport = self._client.get_transport() if self._client is not None else None
        return bool(transport and transport.is_active())

    def _connect_with_retries(self) -> Any:
        paramiko = _paramiko()
        self.check_files()
        delay, last = 0.5, None
        for attempt in range(1, self.retries + 1):
            try:
                return self._connect_once(paramiko)
            except (TimeoutError, ConnectionError, OSError, paramiko.SSHException) as exc:
                if isinstance(exc, paramiko.AuthenticationException | paramiko.BadHostKeyException):
                    raise
                if isinstance(exc, paramiko.SSHException) and "known_hosts" in str(exc):
                    raise
                last = exc
                if attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
        raise HostUnreachableError(
            f"cannot reach {self.name} after {self.retries} attempt(s): {_reason(last)}",
            "check the board is powered and on the network, the address and port in the target YAML, "
            "and that sshd runs on it (`ssh -p PORT USER@HOST true` from this host)",
        ) from last

    def check_files(self) -> None:
        """The key file and known_hosts exist (checked when a deploy is planned, before any work).

        Raises:
            ConfigError: Naming the missing file and what to do.
        """
        if self.key_file and not Path(self.key_file).is_file():
            raise ConfigError(
                f"SSH key file {self.key_file} does not exist",
                "set connection.key_file in the target YAML to your private key "
                "(passwords are not supported)",
            )
        if not Path(self.known_hosts).is_file():
            raise ConfigError(
                f"known_hosts file {self.known_hosts} does not exist, so {self.host}'s host key "
                "cannot be checked",
                f"connect once with `ssh -p {self.port} {self.user}@{self.host}` and check the "
                "fingerprint, or "
                "point connection.known_hosts at a file holding the board's key",
            )

    def _connect_once(self, paramiko: Any) -> Any:
        client = paramiko.SSHClient()
        client.load_host_keys(self.known_hosts)
        client.set_missing_host_key_policy(_RejectUnknown(self))
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.user,
                key_filename=self.key_file,
                look_for_keys=False,
                allow_agent=self.key_file is None,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                channel_timeout=self.connect_timeout,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                f"the host key of {known_hosts_name(self.host, self.port)} CHANGED: known_hosts has "
                f"{fingerprint(exc.expected_key)}, the board now presents {fingerprint(exc.key)}",
                "if the board was re-flashed and you trust the new key, remove the old one with "
                f"`ssh-keygen -R '{known_hosts_name(self.host, self.port)}' -f {self.known_hosts}` "
                "and accept "
                "the new one deliberately; otherwise someone may be intercepting the connection",
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            key = self.key_file or "the SSH agent's keys"
            raise DeviceError(
                f"{self.name} refused authentication with {key}",
                "install the public key on the board "
                f"(`ssh-copy-id -i {self.key_file or 'KEY'}.pub -p {self.port} "
                f"{self.user}@{self.host}`) and check connection.user",
            ) from exc
        except BaseException:
            client.close()
            raise
        transport = client.get_transport()
        transport.set_keepalive(max(1, int(self.dead_after_s / 4)))
        _tcp_dead_after(transport.sock, self.dead_after_s)
        return client

    def _drop(self) -> None:
        for closer in (self._sftp, self._client):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        self._sftp = self._client = None

    def _sftp_client(self) -> Any:
        client = self.connect()
        if self._sftp is None or self._sftp.get_channel().closed:
            self._sftp = client.open_sftp()
            self._sftp.get_channel().settimeout(self.dead_after_s * 4)
        return self._sftp

    # -- commands ----------------------------------------------------------------------------------
    def command_line(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> str:
        """The exact string sent to the board: the wrapped argv, joined and quoted once."""
        env_args = [f"{k}={v}" for k, v in check_env(env).items()]
        wrapped = ["setsid", "-w", "sh", "-c", WRAP, "edgekit", cwd or ".", *map(str, argv)]
        return shlex.join((["env", *env_args] if env_args else []) + wrapped)

    def run(
        self,
        argv: list[str],
        timeout: float | None = None,
        on_stderr_line: LineCallback | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` on the board; stream its stderr lines; kill its process group on timeout or Ctrl-C.

        Raises:
            DeviceError: The program is missing, the folder does not exist, or the command timed out.
            HostUnreachableError: The link died while it ran.
            RemoteCommandError: Non-zero exit and ``check`` is true.
        """
        argv = [str(a) for a in argv]
        proc = self._open(argv, env, cwd)
        try:
            proc.wait(None if timeout is None else timeout * self.patience, on_stderr_line)
        except BaseException:
            proc.kill_group()
            raise
        result = proc.result()
        _raise_if_not_started(result, self.name, cwd)
        if check and not result.ok:
            raise RemoteCommandError(result)
        return result

    def start(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> SSHProcess:
        """Start ``argv`` on the board in the background (stopped by the handle, or by :meth:`close`)."""
        proc = self._open([str(a) for a in argv], env, cwd)
        proc.pump_in_background()
        self._background.append(proc)
        return proc

    def _open(self, argv: list[str], env: dict[str, str] | None, cwd: str | None) -> SSHProcess:
        client = self.connect()
        try:
            channel = client.get_transport().open_session(timeout=self.connect_timeout)
            channel.exec_command(self.command_line(argv, env, cwd))
        except (OSError, EOFError, _paramiko().SSHException) as exc:
            self._drop()
            raise HostUnreachableError(
                f"lost the link to {self.name} while starting {argv[0]!r}: {_reason(exc)}",
                "check the board and the network, then retry",
            ) from exc
        return SSHProcess(self, argv, channel)

    def which(self, program: str) -> str | None:
        """``command -v program`` on the board."""
        res = self.run(["sh", "-c", 'command -v "$1"', "which", program], timeout=30, check=False)
        path = res.stdout.strip()
        return path if res.ok and path else None

    def monotonic(self) -> float:
        """The board's ``time.monotonic()`` (the clock its runners and samplers stamp with)."""
        res = self.run([self.default_python, "-c", "import time; print(repr(time.monotonic()))"], timeout=30)
        return float(res.stdout.strip())

    # -- files -------------------------------------------------------------------------------------
    def put(self, local: str | Path, remote: str) -> None:
        """Upload ``local`` to ``remote`` (parents made) via ``remote.part`` and a rename.

        Raises:
            DeviceError: The board's disk is full or the folder is not writable (partial file removed).
        """
        parent = posixpath.dirname(remote)
        if parent:
            self.run(["mkdir", "-p", "--", parent], timeout=60)
        sftp, part = self._sftp_client(), f"{remote}.part"
        try:
            sftp.put(str(local), part)
            sftp.posix_rename(part, remote)
        except OSError as exc:
            with contextlib.suppress(Exception):
                sftp.remove(part)
            self._raise_io("write", remote, exc)

    def get(self, remote: str, local: str | Path) -> None:
        """Download ``remote`` to ``local`` (written under a temporary name, then renamed)."""
        sftp, tmp = self._sftp_client(), Path(f"{local}.part")
        try:
            sftp.get(remote, str(tmp))
            tmp.replace(local)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            self._raise_io("read", remote, exc)

    def _raise_io(self, verb: str, remote: str, exc: OSError) -> None:
        if not self._alive():
            self._drop()
            raise HostUnreachableError(
                f"lost the link to {self.name} while trying to {verb} {remote}: {_reason(exc)}",
                "check the board and the network, then retry",
            ) from exc
        hint = (
            f"check free space (`df -h {posixpath.dirname(remote) or '/'}`) and that the folder is writable "
            "by the login user, or set connection.workdir to another folder"
            if verb == "write"
            else "the command did not write it"
        )
        raise DeviceError(f"cannot {verb} {remote} on {self.name}: {_reason(exc)}", hint) from exc

    def mkdtemp(self) -> str:
        """``mktemp -d <workdir>/edgekit-XXXXXXXX`` on the board.

        Raises:
            DeviceError: The work folder does not exist or is not writable.
        """
        res = self.run(
            ["mktemp", "-d", posixpath.join(self.workdir, "edgekit-XXXXXXXX")], timeout=60, check=False
        )
        path = res.stdout.strip()
        if not res.ok or not path:
            raise DeviceError(
                f"cannot make a work folder under {self.workdir} on {self.name}: "
                f"{res.tail(3) or 'no output'}",
                "set connection.workdir in the target YAML to a folder the login user can write, "
                "with free space",
            )
        self._workdirs.add(path)
        return path

    def remove(self, path: str) -> None:
        """Delete a file or folder inside a work folder this transport made (anything else is refused).

        Raises:
            DeviceError: ``path`` is outside every work folder of this session.
        """
        norm = posixpath.normpath(path)
        inside = [w for w in self._workdirs if norm == w or norm.startswith(w + "/")]
        if not inside:
            raise DeviceError(
                f"refusing to delete {path} on {self.name}: it is not inside a work folder edgekit made",
                "only the agent's own mktemp folders are ever removed",
            )
        self.run(["rm", "-rf", "--", norm], timeout=120)
        self._workdirs.discard(norm)

    def sha256(self, remote_path: str) -> str:
        """``sha256sum`` of a file on the board."""
        res = self.run(["sha256sum", "--", remote_path], timeout=300)
        return res.stdout.split()[0]

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop background processes still running on the board, then disconnect."""
        for proc in self._background:
            if proc.alive():
                with contextlib.suppress(Exception):
                    proc.stop(grace=2.0)
        self._background.clear()
        self._drop()

    def __enter__(self) -> SSHTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RejectUnknown:
    """Host-key policy: refuse an unknown key, naming its fingerprint and how to accept it."""

    def __init__(self, transport: SSHTransport) -> None:
        self.transport = transport

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        t = self.transport
        raise HostKeyError(
            f"{hostname} is not in {t.known_hosts}; it presents a {key.get_name()} key {fingerprint(key)}",
            "check that fingerprint on the board "
            f"(`ssh-keygen -lf /etc/ssh/ssh_host_{_short(key)}_key.pub`), "
            f"then add it deliberately: `ssh-keyscan -p {t.port} {t.host} >> {t.known_hosts}`",
        )


def _short(key: Any) -> str:
    name = key.get_name()
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(name, "ecdsa" if "ecdsa" in name else name)


def _tcp_dead_after(sock: Any, seconds: float) -> None:
    """Make the kernel give up on unacknowledged data and idle links after about ``seconds``."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(seconds / 4)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max(1, int(seconds / 2)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))


def _raise_if_not_started(result: CommandResult, name: str, cwd: str | None) -> None:
    """Exit 125/126/127 from the wrapper: folder missing, not executable, or not found."""
    if result.exit_code == 125:
        raise DeviceError(f"folder {cwd!r} does not exist on {name}", "create it first, or fix the path")
    if result.exit_code in (126, 127) and not result.stdout and "edgekit:" in result.stderr:
        what = "is not executable" if result.exit_code == 126 else "was not found"
        raise DeviceError(
            f"cannot run {result.argv[0]!r} on {name}: it {what} ({result.tail(1)})",
            "install it on the board or fix the path in the target YAML",
        )


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text
