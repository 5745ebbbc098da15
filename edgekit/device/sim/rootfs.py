"""The emulated boards' root file system: arm64 Debian plus the board's Python environment.

Built once from Debian's repositories (debootstrap, its second stage run by ``qemu-aarch64-static``
through binfmt_misc) and PyPI (the aarch64 wheels of the runtimes, at the versions this host's converters
write for, fetched on the host), then cached outside the clone: ``$EDGEKIT_SIM_HOME`` or
``~/.cache/edgekit/board-sim``. A build goes into a temporary folder renamed into place when complete, so an
interrupted build leaves nothing that looks finished. Measured on this kind of machine: about 5.5 minutes
and 600 MB cold (``../shared/research/arm-emulation.md``), instant warm.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from edgekit.core.errors import DeviceError
from edgekit.core.registry import BOARD_PACKAGES
from edgekit.device.provision import PLATFORM_TAGS, download_wheels, host_versions

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: Debian packages of the board: Python with venv, OpenMP for ncnn, sshd, ps and ip.
PACKAGES = ("python3", "python3-venv", "libgomp1", "openssh-server", "procps", "iproute2")
#: pip distributions the board gets (the ARM targets' runtimes, as the registry names them, and numpy),
#: pinned to this host's versions (what its converters wrote for).
RUNTIMES = (*BOARD_PACKAGES.values(), "numpy")
#: Where the board's Python environment lives inside the root file system.
BOARD_PYTHON = "/opt/edgekit/bin/python"
BOARD_USER = "board"
SKIP_NO_ROOT = "emulated boards need root (chroot, mounts, network and process namespaces)"


def sim_home() -> Path:
    """Where simulator files live (``$EDGEKIT_SIM_HOME`` or ``~/.cache/edgekit/board-sim``)."""
    env = os.environ.get("EDGEKIT_SIM_HOME")
    return Path(env) if env else Path.home() / ".cache" / "edgekit" / "board-sim"


def runtime_pins() -> dict[str, str]:
    """The board's Python packages, ``{distribution: version}``, at the versions installed on this host.

    A runtime this host lacks is left unpinned (its newest aarch64 wheel).
    """
    return {dist: version or "" for dist, version in host_versions(RUNTIMES).items()}


def rootfs_key(pins: dict[str, str] | None = None) -> str:
    """Name of the cached root file system: the suite, its packages and the runtime pins."""
    blob = json.dumps([SUITE, PACKAGES, pins or runtime_pins(), BOARD_PYTHON], sort_keys=True)
    return f"{SUITE}-arm64-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def rootfs_path(pins: dict[str, str] | None = None) -> Path:
    """The finished root file system for these pins (it may not exist yet)."""
    return sim_home() / rootfs_key(pins)


def unavailable() -> str | None:
    """Why emulated boards cannot run here, or ``None`` when they can (root, qemu, binfmt, namespaces)."""
    if os.geteuid() != 0:
        return SKIP_NO_ROOT
    for tool, package in (
        ("qemu-aarch64-static", "qemu-user-static"),
        ("debootstrap", "debootstrap"),
        ("unshare", "util-linux"),
        ("ip", "iproute2"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian package {package}; `make board-sim` installs it)"
    try:
        enable_binfmt()
    except DeviceError as exc:
        return exc.message
    return None


def enable_binfmt() -> None:
    """Make the kernel run aarch64 programs through qemu-aarch64-static (binfmt_misc, flag F).

    Raises:
        DeviceError: binfmt_misc cannot be mounted or the qemu entry cannot be enabled.
    """
    root = Path("/proc/sys/fs/binfmt_misc")
    if not (root / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(root)], capture_output=True)
    if not (root / "register").exists():
        raise DeviceError(
            "binfmt_misc is not available, so aarch64 programs cannot run under qemu here",
            hint="run on a host (or a privileged container) where `mount -t binfmt_misc` works",
        )
    entry = root / "qemu-aarch64"
    if not entry.exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    if not entry.exists():
        subprocess.run(["/usr/lib/systemd/systemd-binfmt"], capture_output=True)
    text = entry.read_text() if entry.exists() else ""
    if "enabled" not in text.splitlines()[:1] or "F" not in _flags(text):
        raise DeviceError(
            "the qemu-aarch64 binfmt entry is missing, disabled or lacks the F flag",
            hint="install qemu-user-static and binfmt-support, then `update-binfmts --enable qemu-aarch64`",
        )


def _flags(entry: str) -> str:
    for line in entry.splitlines():
        if line.startswith("flags:"):
            return line.split(":", 1)[1].strip()
    return ""


def mirror() -> str:
    """The Debian mirror this host's apt uses (``$EDGEKIT_SIM_MIRROR`` first)."""
    env = os.environ.get("EDGEKIT_SIM_MIRROR")
    if env:
        return env
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    return DEFAULT_MIRROR


def ensure_rootfs(*, log: Path | None = None, say=print) -> Path:  # noqa: ANN001 - a print-like callable
    """The cached root file system for this host's runtime versions, built first if it is missing.

    Args:
        log: File the builders' output goes to (default: next to the root file system).
        say: Where progress lines go.

    Raises:
        DeviceError: The host cannot emulate a board, or a build step failed (its log is named).
    """
    pins = runtime_pins()
    final = rootfs_path(pins)
    if (final / ".edgekit-complete").is_file():
        return final
    reason = unavailable()
    if reason:
        raise DeviceError(f"cannot build the board simulator: {reason}")
    home = sim_home()
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / f".{final.name}.tmp-{os.getpid()}"
    log = log or home / f"{final.name}.build.log"
    log.write_text("")
    _clear_stale(home, final.name)
    start = time.monotonic()
    try:
        wheels = home / f"wheels-{final.name}"
        _step(say, start, f"fetching aarch64 wheels {_pin_list(pins)}")
        _download_wheels(pins, wheels)
        _step(say, start, f"debootstrap {SUITE} arm64, first stage")
        _run(
            [
                "debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
                f"--include={','.join(PACKAGES)}", SUITE, str(tmp), mirror(),
            ],
            log,
        )  # fmt: skip
        _step(say, start, "second stage under qemu-aarch64 (about 5 minutes)")
        _run(["chroot", str(tmp), "/debootstrap/debootstrap", "--second-stage"], log)
        _step(say, start, "the board's Python environment")
        shutil.copytree(wheels, tmp / "wheels")
        venv = str(Path(BOARD_PYTHON).parents[1])
        _run(["chroot", str(tmp), "python3", "-m", "venv", venv], log)
        install = [f"{d}=={v}" if v else d for d, v in pins.items()]
        pip = [BOARD_PYTHON, "-m", "pip", "install", "-q", "--no-index", "--find-links", "/wheels"]
        _run(["chroot", str(tmp), *pip, *install], log)
        shutil.rmtree(tmp / "wheels")
        _run(["chroot", str(tmp), "useradd", "-m", "-s", "/bin/sh", BOARD_USER], log)
        # no password, not locked: sshd (without PAM) refuses keys for a locked ("!") account
        _run(["chroot", str(tmp), "usermod", "-p", "*", BOARD_USER], log)
        # the board's user owns its Python environment, so `edgekit board prepare` can install there
        _run(["chroot", str(tmp), "chown", "-R", f"{BOARD_USER}:{BOARD_USER}", venv], log)
        (tmp / "etc" / "edgekit-sim.json").write_text(
            json.dumps({"suite": SUITE, "runtimes": pins}, indent=1)
        )
        (tmp / ".edgekit-complete").write_text(f"{time.monotonic() - start:.0f} s\n")
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _step(say, start, f"board root file system ready: {final}")
    return final


def _clear_stale(home: Path, name: str) -> None:
    """Remove temporary folders of builds that died (their process is gone)."""
    for stale in home.glob(f".{name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)


def _pin_list(pins: dict[str, str]) -> str:
    return "(" + ", ".join(f"{d} {v or 'newest'}" for d, v in pins.items()) + ")"


def _step(say, start: float, text: str) -> None:  # noqa: ANN001
    say(f"[board-sim {time.monotonic() - start:5.0f} s] {text}")


def _download_wheels(pins: dict[str, str], dest: Path) -> None:
    """The aarch64 wheels for bookworm's Python 3.11 (the board's), fetched once."""
    if (dest / ".complete").is_file():
        return
    shutil.rmtree(dest, ignore_errors=True)
    specs = [f"{d}=={v}" if v else d for d, v in pins.items()]
    download_wheels(specs, PLATFORM_TAGS["aarch64"], "3.11", dest)
    (dest / ".complete").write_text("")


def _run(argv: list[str], log: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env["DEBIAN_FRONTEND"] = "noninteractive"
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-5:]
        raise DeviceError(
            f"building the board simulator failed at `{' '.join(argv[:3])} ...` (exit {done.returncode}): "
            + " | ".join(tail),
            hint=f"see {log}; a rerun starts the failed build again from scratch",
        )
