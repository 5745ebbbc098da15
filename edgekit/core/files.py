"""Atomic writes and hashing: nothing half-written is ever left behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgekit.core.errors import EdgekitError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash a JSON-serialisable object independently of key order."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only file systems, immutable folders (root ignores mode bits)
        raise EdgekitError(
            f"cannot create output folder {folder}: {exc.strerror}",
            "choose a folder you can write to (e.g. --out runs/)",
        ) from exc
    if not os.access(folder, os.W_OK):
        raise EdgekitError(f"output folder {folder} is not writable", "choose a folder you can write to")


def _unwritable(folder: Path, exc: OSError) -> EdgekitError:
    return EdgekitError(
        f"cannot write to {folder}: {exc.strerror or exc}", "choose a folder you can write to"
    )


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path = Path(path)
    _check_writable(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _unwritable(path.parent, exc) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        Path(tmp).chmod(0o644)  # mkstemp makes 0600; artifacts and reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text atomically (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a temp sibling and rename it to ``final`` only if the block succeeds.

    Example:
        >>> with atomic_dir(out / "artifact") as tmp:  # doctest: +SKIP
        ...     (tmp / "model.onnx").write_bytes(data)
    """
    final = Path(final)
    _check_writable(final.parent)
    if final.exists() and not overwrite:
        raise EdgekitError(f"{final} already exists", "remove it or choose another output folder")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as exc:
        raise _unwritable(final.parent, exc) from exc
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_run_dir(path: str | Path) -> Path:
    """Create a new run folder; an existing or unwritable location is a clear error, not a traceback."""
    path = Path(path)
    hint = "choose a writable folder with --out (e.g. --out runs/)"
    if path.exists():
        raise EdgekitError(
            f"run folder {path} already exists", "choose another --run-id or remove the folder"
        )
    try:
        path.mkdir(parents=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise EdgekitError(f"cannot write the run folder {path}: {exc.strerror or exc}", hint) from exc
    return path
