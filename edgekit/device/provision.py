"""The board's runtime: checked before a bench, installed by ``edgekit board prepare``.

An artifact is written by this host's converter (pnnx, MNNConvert, onnxruntime.quantization) for the
runtime version installed here, so the board must run that version. :func:`check_board_runtime` asks the
board's Python which versions it has (one short command) and refuses a missing runtime or a skew with
both versions and the command that fixes it. :func:`prepare_board` fixes it: it asks the board for its
platform and Python, fetches the wheels for them on this host (``pip download`` with the manylinux tags
of that platform), pushes them over the transport and installs them with the board's pip, offline.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import posixpath
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.core.errors import DeviceError

#: Runs on the board: the versions of the given distributions (null when missing), its platform, Python.
_PROBE = (
    "import importlib.metadata as m, json, platform, sys\n"
    "def v(d):\n"
    "    try:\n"
    "        return m.version(d)\n"
    "    except m.PackageNotFoundError:\n"
    "        return None\n"
    "print(json.dumps({'versions': {d: v(d) for d in sys.argv[1:]}, 'machine': platform.machine(),"
    " 'python': '%d.%d' % sys.version_info[:2], 'pip': v('pip')}))\n"
)
#: manylinux tags pip is told for an aarch64 / x86_64 board (without the newer ones it picks old wheels).
PLATFORM_TAGS = {
    arch: tuple(f"manylinux{v}_{arch}" for v in ("_2_28", "_2_27", "_2_24", "_2_17", "2014"))
    for arch in ("aarch64", "x86_64")
}
#: The board needs numpy beside any runtime (the runners' arrays).
COMMON = ("numpy",)


def host_versions(packages: tuple[str, ...]) -> dict[str, str | None]:
    """The versions of ``packages`` installed on this host (``None`` when one is not)."""
    out: dict[str, str | None] = {}
    for dist in packages:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def probe(transport: Any, python: str, packages: tuple[str, ...]) -> dict[str, Any]:
    """Ask the board's ``python`` for the versions of ``packages``, its machine, Python and pip.

    Raises:
        DeviceError: The board's Python does not run (named, with the target setting that chooses it).
    """
    res = transport.run([python, "-c", _PROBE, *packages], timeout=180, check=False)
    try:
        return dict(json.loads(res.stdout.strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError, TypeError, ValueError):
        raise DeviceError(
            f"the board's Python ({python}) did not run on {transport.name}: {res.tail(3) or 'no output'}",
            "install python3 on the board, or point the target's connection.python at one",
        ) from None


def prepare_command(target: Any) -> str:
    """The command that installs a target's runtime on its board (``--device sim`` for a simulator's)."""
    sim = " --device sim" if getattr(target, "emulator", None) else ""
    return f"edgekit board prepare {target.name}{sim}"


def artifact_runtime(transport: Any, python: str, backend_name: str, prepare: str | None = None) -> dict:
    """:func:`check_board_runtime` for an artifact's backend, on a board (not on this host).

    This host (a :class:`~edgekit.device.transport.LocalTransport`, whatever interpreter runs the runner)
    has edgekit's own runtimes, and a backend whose host side is not installed here has nothing to compare
    the board with: neither is asked.
    """
    from edgekit.core.errors import EdgekitError
    from edgekit.core.registry import BACKENDS
    from edgekit.device.transport import LocalTransport

    if isinstance(transport, LocalTransport) or backend_name not in BACKENDS:
        return {}
    try:
        backend = BACKENDS.get(backend_name)
    except EdgekitError:
        return {}
    return check_board_runtime(transport, python, backend, prepare)


def check_board_runtime(transport: Any, python: str, backend: Any, prepare: str | None = None) -> dict:
    """Refuse a bench whose board lacks the backend's runtime or runs another version than this host's.

    ``backend.board_packages`` names the runtime first; it must be the version this host's converter
    wrote for. A backend that installs nothing with pip (TensorRT, an MCU) is not checked. ``prepare`` is
    the command a refusal names (:func:`prepare_command`).

    Returns:
        The board's versions of the backend's packages.

    Raises:
        DeviceError: A package is missing or the runtime's version differs, naming both versions and
            ``edgekit board prepare``.
    """
    packages = tuple(getattr(backend, "board_packages", ()) or ())
    if not packages:
        return {}
    wanted = host_versions(packages)
    found = probe(transport, python, (*packages, *COMMON))
    have = found.get("versions") or {}
    fix = prepare or "edgekit board prepare <target>"
    missing = [d for d in (*packages, *COMMON) if not have.get(d)]
    if missing:
        raise DeviceError(
            f"the board's Python ({python} on {transport.name}) has no {', '.join(missing)}; the artifact is "
            f"for {packages[0]} {wanted.get(packages[0]) or '(any)'}",
            f"run `{fix}` (it installs this host's versions on the board, offline)",
        )
    runtime = packages[0]
    if wanted.get(runtime) and have[runtime] != wanted[runtime]:
        raise DeviceError(
            f"version skew: the board runs {runtime} {have[runtime]}, this host's converter wrote the "
            f"artifact for {runtime} {wanted[runtime]}",
            f"run `{fix}` to install {runtime} {wanted[runtime]} on the board",
        )
    return {d: have.get(d) for d in (*packages, *COMMON)}


def prepare_board(
    transport: Any, python: str, packages: tuple[str, ...], cache: Path, *, say: Callable[[str], None] = print
) -> dict[str, str]:
    """Install this host's versions of ``packages`` (and numpy) with the board's pip, from pushed wheels.

    Returns:
        ``{distribution: version}`` now on the board.

    Raises:
        DeviceError: The board has no pip, no wheel exists for its platform, or pip failed there.
    """
    wanted = host_versions((*packages, *COMMON))
    found = probe(transport, python, tuple(wanted))
    have = found.get("versions") or {}
    todo = {d: v for d, v in wanted.items() if have.get(d) != v or v is None}
    if not todo:
        say(f"the board already has {', '.join(f'{d} {v}' for d, v in wanted.items())}")
        return {d: v for d, v in have.items() if v}
    if not found.get("pip"):
        raise DeviceError(
            f"the board's Python ({python}) has no pip to install {', '.join(todo)} with",
            "on the board: `python3 -m venv <dir>` (Debian: apt install python3-venv) and set the target's "
            "connection.python to <dir>/bin/python",
        )
    machine, pyver = found.get("machine", ""), found.get("python", "")
    tags = PLATFORM_TAGS.get(machine)
    if tags is None:
        raise DeviceError(
            f"edgekit cannot fetch wheels for a {machine or 'unknown'} board",
            "install the runtime on the board by hand at the version `edgekit doctor` shows",
        )
    wheels = cache / f"{machine}-cp{pyver.replace('.', '')}"
    specs = [f"{d}=={v}" if v else d for d, v in todo.items()]
    say(f"fetching wheels for {machine} Python {pyver}: {', '.join(specs)}")
    download_wheels(specs, tags, pyver, wheels)
    remote = transport.mkdtemp()
    try:
        names = sorted(p.name for p in wheels.glob("*.whl"))
        say(f"pushing {len(names)} wheels to {transport.name}")
        for name in names:
            transport.put(wheels / name, posixpath.join(remote, name))
        say("installing with the board's pip (offline)")
        res = transport.run(
            [python, "-m", "pip", "install", "-q", "--no-index", "--find-links", remote, *specs],
            timeout=1800,
            check=False,
        )
        if not res.ok:
            raise DeviceError(
                f"pip on the board could not install {', '.join(specs)}: {res.tail(4)}",
                "check the board's free space and that its connection.python is a venv it may write to",
            )
    finally:
        transport.remove(remote)
    now = probe(transport, python, tuple(wanted)).get("versions") or {}
    say("the board now has " + ", ".join(f"{d} {now.get(d)}" for d in wanted))
    return {d: v for d, v in now.items() if v}


def download_wheels(specs: list[str], tags: tuple[str, ...], pyver: str, dest: Path) -> None:
    """Fetch the binary wheels of ``specs`` for a ``tags`` platform and CPython ``pyver`` into ``dest``.

    Raises:
        DeviceError: pip found no wheel (its last lines are quoted).
    """
    dest.mkdir(parents=True, exist_ok=True)
    abi = "cp" + pyver.replace(".", "")
    argv = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", pyver,
            "--implementation", "cp", "--abi", abi, *[a for t in tags for a in ("--platform", t)],
            "-d", str(dest), *specs]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise DeviceError(
            f"no wheels for {' '.join(specs)} on {tags[0]} Python {pyver}: {tail}",
            f"check this host's network to PyPI; the command was: {shlex.join(argv[2:6])} ...",
        )
