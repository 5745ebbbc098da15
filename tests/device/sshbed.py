"""A real OpenSSH server for the agent's tests: on 127.0.0.1, or in a network namespace as a board.

Everything (host and client keys, config, known_hosts, pid file) lives in one folder; sshd runs in the
foreground as a child of the test process and is stopped by its pid. In a namespace the "board" has its
own address (10.<n>.0.2) behind a veth pair, so its link can be cut with ``ip link set ... down``.
Facts from research/toolchains-b.md §4: sshd needs /run/sshd, absolute paths, and ``StrictModes no``
for keys under /tmp.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SKIP_NO_SSHD = "OpenSSH server not installed (make system-deps installs Debian openssh-server)"
SKIP_NO_NETNS = "network namespaces need root and iproute2 (`ip netns`); not available here"


def sshd_available() -> bool:
    """True when an sshd binary and ssh-keygen exist."""
    return Path(SSHD).is_file() and shutil.which("ssh-keygen") is not None


def netns_available() -> bool:
    """True when this process may create network namespaces."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"ekprobe{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


class SshServer:
    """One sshd. Use :meth:`start` / :meth:`stop`; :meth:`close` removes the namespace too.

    Args:
        folder: Where keys and config go.
        netns: Run inside a new network namespace (needs root) as a board with its own address.
        path_prefix: Folder put first on the PATH of sessions (fake board tools).
        env: Extra environment for sessions (``SetEnv``).
    """

    _counter = 0

    def __init__(
        self,
        folder: Path,
        *,
        netns: bool = False,
        path_prefix: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        SshServer._counter += 1
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.netns = f"ek{os.getpid() % 10000}n{SshServer._counter}" if netns else None
        self.veth = f"ekh{os.getpid() % 10000}n{SshServer._counter}"
        subnet = 100 + (os.getpid() + SshServer._counter) % 150
        self.host = f"10.{subnet}.0.2" if netns else "127.0.0.1"
        self._host_side = f"10.{subnet}.0.1"
        self.port = 22 if netns else _free_port()
        self.host_key = self.folder / "host_ed25519"
        self.key_file = self.folder / "client_ed25519"
        self.known_hosts = self.folder / "known_hosts"
        self.path_prefix, self.env = path_prefix, env or {}
        self.proc: subprocess.Popen | None = None
        _keygen(self.host_key)
        _keygen(self.key_file)
        shutil.copy(f"{self.key_file}.pub", self.folder / "authorized_keys")
        self.trust_current_host_key()
        if self.netns:
            self._make_netns()

    # -- keys --------------------------------------------------------------------------------------
    def trust_current_host_key(self) -> None:
        """Write known_hosts with the server's current host key (what `ssh-keyscan` would give)."""
        kind, blob = Path(f"{self.host_key}.pub").read_text().split()[:2]
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        self.known_hosts.write_text(f"{name} {kind} {blob}\n")

    def rotate_host_key(self) -> None:
        """Give the server a new host key (a re-flashed board, or a man in the middle); restart it."""
        running = self.proc is not None
        self.stop()
        _keygen(self.host_key)
        if running:
            self.start()

    # -- lifetime ----------------------------------------------------------------------------------
    def _config(self) -> Path:
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.folder / 'authorized_keys'}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
        ]
        path = os.environ.get("PATH", "/usr/bin:/bin")
        env = {"PATH": f"{self.path_prefix}:{path}" if self.path_prefix else path, **self.env}
        lines.append("SetEnv " + " ".join(f"{k}={v}" for k, v in env.items()))
        cfg = self.folder / "sshd_config"
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def start(self) -> None:
        """Start sshd and wait until it accepts connections."""
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        cfg = self._config()
        subprocess.run([SSHD, "-t", "-f", str(cfg)], check=True, capture_output=True)
        argv = [SSHD, "-D", "-e", "-f", str(cfg)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.proc = subprocess.Popen(argv, stderr=open(self.folder / "sshd.log", "ab"))
        self._wait_listening()

    def _wait_listening(self, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"SSH"):
                        return
            except OSError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.folder / 'sshd.log').read_text()[-500:]}")
            time.sleep(0.05)
        raise RuntimeError(f"sshd on {self.host}:{self.port} is not listening")

    def stop(self) -> None:
        """Stop sshd (sessions it forked keep running until their connection ends, like a real board)."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def kill_all_sessions(self) -> None:
        """SIGKILL sshd and every session process it started (sshd 'killed mid-run')."""
        if self.proc is None:
            return
        # this server's per-connection processes ("sshd: user@notty") are its children (or, in a
        # namespace, the children of the sshd that `ip netns exec` became)
        children = _children(self.proc.pid)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def _make_netns(self) -> None:
        ns, veth, dev = self.netns, self.veth, f"{self.veth}d"
        run = _ip
        run("netns", "add", ns)
        run("link", "add", veth, "type", "veth", "peer", "name", dev)
        run("link", "set", dev, "netns", ns)
        run("addr", "add", f"{self._host_side}/24", "dev", veth)
        run("link", "set", veth, "up")
        run("netns", "exec", ns, "ip", "addr", "add", f"{self.host}/24", "dev", dev)
        run("netns", "exec", ns, "ip", "link", "set", dev, "up")
        run("netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def link(self, up: bool) -> None:
        """Cut or restore the board's link (the host side of the veth pair)."""
        _ip("link", "set", self.veth, "up" if up else "down")

    def processes(self, pattern: str) -> list[str]:
        """Command lines of processes matching ``pattern`` (to check nothing was left running)."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                raw = (proc / "cmdline").read_bytes()
                cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if pattern in cmdline:
                found.append(f"{proc.name} {cmdline}")
        return found

    def close(self) -> None:
        """Stop sshd, end the sessions still open on it, and remove the namespace.

        A cut link leaves the board's session ("sshd: user@notty") waiting for a peer that is gone, for
        as long as TCP keepalive takes (hours); the test is over, so it goes with the server.
        """
        self.kill_all_sessions()
        if self.netns:
            listed = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
            for pid in listed.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)

    def transport(self, **kw):  # noqa: ANN201 - test helper
        """An :class:`~edgekit.device.ssh.SSHTransport` to this server."""
        from edgekit.device.ssh import SSHTransport

        (self.folder / "work").mkdir(exist_ok=True)
        opts = {
            "port": self.port,
            "key_file": str(self.key_file),
            "known_hosts": str(self.known_hosts),
            "python": sys.executable,
            "connect_timeout": 3.0,
            "retries": 2,
            "dead_after_s": 4.0,
            "workdir": str(self.folder / "work"),
            **kw,
        }
        return SSHTransport(self.host, self.user, **opts)


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        ppid = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")), None)
        if ppid == str(pid):
            out.append(int(proc.name))
    return out


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)
