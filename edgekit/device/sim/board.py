"""Start and stop an emulated board: sshd from the arm64 root file system, as a Cortex-A72 or -A76.

A running board is:
- a network namespace ``eksim-<board>`` holding one end of a veth pair, so the board has its own address
  (10.251.<n>.2) and the host reaches it at 10.251.<n>.1;
- inside it, ``unshare --pid --mount --fork --kill-child``: a process namespace whose first process is the
  board's sshd (so the board cannot see the host's processes, and everything on it dies with it) and a
  mount namespace holding the board's ``/proc`` (with an ARM ``/proc/cpuinfo`` of the emulated core bound
  over it), ``/dev``, and its own ``/tmp`` and ``/run``;
- ``QEMU_CPU`` set for sshd and, through ``SetEnv``, for every session, so what runs there is the board's
  core.

Its files (host keys, the client key, known_hosts, the pid of the namespace's parent) are under
``<sim home>/<board>/``; the root file system is shared by the boards (each mounts its own /tmp).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgekit.core.errors import DeviceError
from edgekit.device.sim.profiles import BoardProfile, profile
from edgekit.device.sim.rootfs import BOARD_PYTHON, BOARD_USER, ensure_rootfs, sim_home

#: Seconds sshd gets to start listening under qemu (it is emulated too).
START_TIMEOUT_S = 60.0
#: How many times longer than on a board the agent waits for a command on a simulator (int8 runs 60-120x
#: slower under qemu than natively, fp32 200-300x; the agent's fixed timeouts are for small file operations).
SIM_PATIENCE = 20.0
#: Size of the board's /tmp, where the agent works (a small board's storage).
TMP_SIZE = "2g"


@dataclass
class SimConnection:
    """How to reach a running simulator (the fields of a target's ``connection:`` block)."""

    host: str
    port: int
    user: str
    key_file: str
    known_hosts: str
    python: str
    workdir: str
    cpu: str
    board: str

    def to_connection(self) -> dict:
        """A target's ``connection:`` block for this board (slow, emulated: patient timeouts)."""
        return {
            "type": "ssh",
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "key_file": self.key_file,
            "known_hosts": self.known_hosts,
            "python": self.python,
            "workdir": self.workdir,
            "connect_timeout": 20.0,
            "dead_after_s": 60.0,
            "patience": SIM_PATIENCE,
        }


class BoardSim:
    """One emulated board (``start``, ``stop``, ``running``, ``connection``).

    Args:
        name: A simulator (``rpi4``, ``rk3588``) or a target's ``board:`` value.
    """

    def __init__(self, name: str) -> None:
        self.profile: BoardProfile = profile(name)
        self.folder = sim_home() / self.profile.name
        self.netns = f"eksim-{self.profile.name}"
        self.veth = f"eksim{self.profile.subnet}h"

    # -- state ------------------------------------------------------------------------------------
    @property
    def _pidfile(self) -> Path:
        return self.folder / "unshare.pid"

    def _pid(self) -> int | None:
        try:
            pid = int(self._pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"unshare" in cmdline else None

    def running(self) -> bool:
        """True when this board's sshd answers on its address."""
        return self._pid() is not None and _answers(self.profile.address, 22)

    def connection(self) -> SimConnection:
        """How to reach this board (valid while it runs)."""
        return SimConnection(
            host=self.profile.address,
            port=22,
            user=BOARD_USER,
            key_file=str(self.folder / "client_ed25519"),
            known_hosts=str(self.folder / "known_hosts"),
            python=BOARD_PYTHON,
            workdir="/tmp",
            cpu=self.profile.cpu,
            board=self.profile.name,
        )

    # -- lifetime ---------------------------------------------------------------------------------
    def start(self, *, say=print) -> SimConnection:  # noqa: ANN001 - a print-like callable
        """Start the board (building its root file system first if needed); a running board is reused.

        Raises:
            DeviceError: The host cannot emulate boards, or sshd did not come up (its log is named).
        """
        if self.running():
            return self.connection()
        self.stop()  # leftovers of a board that died
        rootfs = ensure_rootfs(say=say)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._keys(rootfs)
        self._config(rootfs)
        self._network()
        log = self.folder / "sshd.log"
        argv = ["ip", "netns", "exec", self.netns, "unshare", "--pid", "--mount", "--fork", "--kill-child",
                "--propagation", "private", "sh", "-c", self._script(rootfs)]  # fmt: skip
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "QEMU_CPU": self.profile.cpu}
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True
            )
        self._pidfile.write_text(str(proc.pid))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.stop()
                raise DeviceError(
                    f"the {self.profile.name} simulator exited at start: {_tail(log)}",
                    hint=f"see {log}; `edgekit board sim stop --board {self.profile.name}` clears what is "
                    "left",
                )
            if _answers(self.profile.address, 22):
                say(f"{self.profile.name} simulator ({self.profile.cpu}) up at {self.profile.address}")
                return self.connection()
            time.sleep(0.5)
        self.stop()
        raise DeviceError(
            f"the {self.profile.name} simulator did not answer on {self.profile.address}:22 "
            f"within {START_TIMEOUT_S:.0f} s",
            hint=f"see {log}; a loaded host is slower under qemu: retry `edgekit board sim start "
            f"--board {self.profile.name}`",
        )

    def stop(self) -> bool:
        """Stop the board and everything running on it, and remove its network. True if it was running."""
        pid, was = self._pid(), False
        if pid is not None:
            was = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)  # unshare --kill-child takes the namespace's init with it
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        listed = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
        for left in listed.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(left), signal.SIGKILL)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        self._pidfile.unlink(missing_ok=True)
        return was

    # -- parts ------------------------------------------------------------------------------------
    def _keys(self, rootfs: Path) -> None:
        """The board's host key and the host's client key, both kept in the board's folder.

        The host key is the board's identity: made once, kept across restarts and root file system
        rebuilds, and trusted in ``known_hosts`` only when it is made. A board whose key changes (a
        re-flashed board, or someone between) is then refused by the agent, like a real one.
        """
        host_key, client = self.folder / "host_ed25519", self.folder / "client_ed25519"
        if not host_key.is_file():
            _keygen(host_key)
            kind, blob = Path(f"{host_key}.pub").read_text().split()[:2]
            (self.folder / "known_hosts").write_text(f"{self.profile.address} {kind} {blob}\n")
        if not client.is_file():
            _keygen(client)
        etc = rootfs / "etc" / "ssh"
        board_key = etc / f"edgekit_{self.profile.name}_ed25519"
        shutil.copyfile(host_key, board_key)
        board_key.chmod(0o600)
        authorized = etc / f"edgekit_{self.profile.name}_authorized_keys"
        authorized.write_text(Path(f"{client}.pub").read_text())
        authorized.chmod(0o644)

    def _config(self, rootfs: Path) -> None:
        name = self.profile.name
        lines = [
            "Port 22",
            f"ListenAddress {self.profile.address}",
            f"HostKey /etc/ssh/edgekit_{name}_ed25519",
            "PidFile none",
            f"AuthorizedKeysFile /etc/ssh/edgekit_{name}_authorized_keys",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin no",
            "UsePAM no",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
            f"SetEnv QEMU_CPU={self.profile.cpu}",
        ]
        (rootfs / self._config_name().lstrip("/")).write_text("\n".join(lines) + "\n")
        (self.folder / "cpuinfo").write_text(self.profile.cpuinfo() + "\n")
        (self.folder / "board.json").write_text(json.dumps(asdict(self.connection()), indent=1))

    def _config_name(self) -> str:
        return f"/etc/ssh/sshd_config.edgekit-{self.profile.name}"

    def _network(self) -> None:
        ns, veth, dev = self.netns, self.veth, f"eksim{self.profile.subnet}d"
        steps = [
            ["netns", "add", ns],
            ["link", "add", veth, "type", "veth", "peer", "name", dev],
            ["link", "set", dev, "netns", ns],
            ["addr", "add", f"{self.profile.host_address}/24", "dev", veth],
            ["link", "set", veth, "up"],
            ["netns", "exec", ns, "ip", "addr", "add", f"{self.profile.address}/24", "dev", dev],
            ["netns", "exec", ns, "ip", "link", "set", dev, "up"],
            ["netns", "exec", ns, "ip", "link", "set", "lo", "up"],
        ]
        for step in steps:
            done = subprocess.run(["ip", *step], capture_output=True, text=True)
            if done.returncode != 0:
                self.stop()
                raise DeviceError(
                    f"cannot make the {self.profile.name} simulator's network (`ip {' '.join(step)}`): "
                    f"{done.stderr.strip()}",
                    hint="network namespaces need root and iproute2; another tool may hold 10.251.0.0/16",
                )

    def _script(self, rootfs: Path) -> str:
        """What runs as the new namespaces' first process: the board's mounts, then sshd as its init."""
        r, q = str(rootfs), shlex.quote
        cpuinfo = self.folder / "cpuinfo"
        return "; ".join(
            [
                "set -e",
                f"mount -t proc proc {q(r + '/proc')}",
                f"mount --bind {q(str(cpuinfo))} {q(r + '/proc/cpuinfo')}",
                f"mount -t sysfs sysfs {q(r + '/sys')}",
                f"mount --bind /dev {q(r + '/dev')}",
                f"mount -t tmpfs -o size={TMP_SIZE},mode=1777 tmpfs {q(r + '/tmp')}",
                f"mount -t tmpfs -o mode=755 tmpfs {q(r + '/run')}",
                f"mkdir -p {q(r + '/run/sshd')}",
                f"exec chroot {q(r)} /usr/sbin/sshd -D -e -f {q(self._config_name())}",
            ]
        )


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2.0) as s:
            s.settimeout(5.0)
            return s.recv(4).startswith(b"SSH")
    except OSError:
        return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _tail(log: Path, n: int = 3) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-n:]) or "(no output)"
    except OSError:
        return "(no log)"
