"""A built artifact: the runtime's files and the verified ``artifact.json`` sidecar the runner reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.core.errors import ModelError
from edgekit.core.files import sha256_file
from edgekit.data.preprocess import PreprocessSpec

ARTIFACT_JSON = "artifact.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Artifact:
    """A built model folder and its verified ``artifact.json``.

    Attributes:
        dir: The artifact folder.
        backend: Registry name of the backend that built it.
        precision: ``fp32`` / ``fp16`` / ``int8``.
        files: Role -> relative path (``{"model": "model.onnx"}``).
        meta: The whole ``artifact.json``.
    """

    dir: Path
    backend: str
    precision: str
    files: dict[str, str]
    meta: dict[str, Any]

    @classmethod
    def load(cls, directory: str | Path) -> Artifact:
        """Read ``artifact.json`` from ``directory`` and re-check the sha256 of every listed file.

        Raises:
            ModelError: The sidecar is missing or unreadable, or a file is missing or changed.

        Example:
            >>> art = Artifact.load("runs/x/build")  # doctest: +SKIP
            >>> art.path("model"), art.meta["input"]["shape"]  # doctest: +SKIP
        """
        directory = Path(directory)
        meta = _read_sidecar(directory)
        for rel, digest in meta["sha256"].items():
            _verify_file(directory, rel, digest)
        return cls(directory, meta["backend"], meta["precision"], dict(meta["files"]), meta)

    def path(self, role: str = "model") -> Path:
        """Return the absolute path of the file with ``role``."""
        if role not in self.files:
            raise ModelError(f"artifact {self.dir} has no '{role}' file", f"it lists: {sorted(self.files)}")
        return self.dir / self.files[role]

    def all_files(self) -> list[str]:
        """Return every file (relative path) the artifact consists of, sidecar included."""
        return [*self.meta["sha256"], ARTIFACT_JSON]

    @property
    def preprocess(self) -> PreprocessSpec:
        """The preprocessing the model expects."""
        return PreprocessSpec(**self.meta["preprocess"])

    @property
    def runner(self) -> str:
        """File name of the device-side runner (in its backend's package; see ``agent.runner_path``)."""
        return self.meta["runner"]


_REQUIRED_KEYS = ("schema", "backend", "precision", "files", "sha256", "input", "output", "runner")


def _read_sidecar(directory: Path) -> dict[str, Any]:
    sidecar = directory / ARTIFACT_JSON
    if not sidecar.is_file():
        raise ModelError(
            f"{directory} is not an artifact: no {ARTIFACT_JSON}", "build one with `edgekit build`"
        )
    try:
        meta = json.loads(sidecar.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{sidecar} is not valid JSON: {exc}", "rebuild the artifact") from exc
    missing = [k for k in _REQUIRED_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing or meta["schema"] != SCHEMA_VERSION:
        raise ModelError(
            f"{sidecar} is not an edgekit schema-{SCHEMA_VERSION} sidecar (missing: {', '.join(missing)})",
            "rebuild the artifact with this version of edgekit",
        )
    unhashed = sorted(set(meta["files"].values()) - set(meta["sha256"]))
    if unhashed:
        raise ModelError(f"{sidecar} lists files without a sha256: {unhashed}", "rebuild the artifact")
    return meta


def _verify_file(directory: Path, rel: str, digest: str) -> None:
    path = directory / rel
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ModelError(
            f"{directory / ARTIFACT_JSON} lists a file outside the artifact: {rel}", "rebuild it"
        )
    if not path.is_file():
        raise ModelError(f"artifact file {path} is missing", "rebuild the artifact")
    if sha256_file(path) != digest:
        raise ModelError(
            f"artifact file {path} changed since it was built (sha256 mismatch)",
            "rebuild the artifact; never edit files inside an artifact folder",
        )
