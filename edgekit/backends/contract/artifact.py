"""A built artifact: the runtime's files and the verified ``artifact.json`` sidecar the runner reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit.core.errors import ModelError
from edgekit.core.files import sha256_file
from edgekit.data.preprocess import PreprocessSpec

ARTIFACT_JSON = "artifact.json"
SCHEMA_VERSION = 1


class DeviceBuild(BaseModel):
    """``artifact.json``'s ``device_build``: a model the host stages and the board itself builds (TensorRT).

    The backend writes it ``staged`` (the source files, the file the board will make, its flags);
    :meth:`edgekit.device.agent.Agent.build_on_device` completes it ``built`` with where, with what and how
    long, and the check the board's runner ran on the result.

    Attributes:
        state: ``staged`` (built on the host up to the board's step) or ``built`` (completed on the board).
        model_file: The file the board's build writes (the engine).
        precision_flags: The runtime's precision flags for that build.
        on: The device it was built on.
        version: The runtime's version on that device.
        seconds: How long the board's build took.
        argv: The build command the runner ran there.
        warnings: What the board's build printed as warnings.
        device: The board's facts as its runner reported them.
        check: The runner's ``--check`` of the completed artifact on the board.
    """

    model_config = ConfigDict(extra="forbid")

    state: Literal["staged", "built"]
    model_file: str
    precision_flags: list[str] = Field(default_factory=list)
    on: str | None = None
    version: str | None = None
    seconds: float | None = None
    argv: list[str] | None = None
    warnings: list[str] | None = None
    device: dict[str, Any] | None = None
    check: dict[str, Any] | None = None


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
    def device_build(self) -> DeviceBuild | None:
        """The board's build of this artifact (staged or built), or ``None`` for a host build."""
        raw = self.meta.get("device_build")
        return DeviceBuild.model_validate(raw) if raw is not None else None

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
