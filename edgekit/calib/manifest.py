"""The calibration-set manifest: what a set holds, hashed so that "the same set" can be checked.

On disk a set named ``N`` under the root ``calibration/`` is::

    calibration/N/manifest.json          the current version
    calibration/N/versions/v<k>.json     every version's manifest (the current one included)
    calibration/N/images/<sha16><ext>    content-addressed copies of the source bytes
    calibration/N/labels/<sha16>.txt     content-addressed YOLO label files (named by the label's own hash)

Files are content-addressed so that every version stays readable after later imports.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.core.errors import CalibrationError
from edgekit.core.files import atomic_write_json, sha256_bytes
from edgekit.data.preprocess import PreprocessSpec

MANIFEST = "manifest.json"
VERSIONS = "versions"
IMAGES = "images"
LABELS = "labels"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SourceInfo(BaseModel):
    """Where a version's images came from and how they were picked."""

    model_config = ConfigDict(extra="forbid")

    path: str
    kind: Literal["folder", "dataset", "list"]
    split: str | None = None
    strategy: Literal["random", "stratified"] = "random"
    seed: int = 0
    requested_count: int | None = None


class ImageEntry(BaseModel):
    """One stored image; ``file`` and ``label_file`` are relative to the set folder."""

    model_config = ConfigDict(extra="forbid")

    file: str
    sha256: str
    width: int
    height: int
    bytes: int
    source_name: str
    mode: str = "RGB"
    label_file: str | None = None
    label_sha256: str | None = None


class Manifest(BaseModel):
    """One version of a calibration set."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: int = Field(ge=1)
    created: str
    source: SourceInfo
    count: int
    images: list[ImageEntry]
    preprocess: PreprocessSpec
    sha256: str
    has_labels: bool = False
    class_names: list[str] | None = None
    warnings: list[str] = Field(default_factory=list)

    def ref(self) -> dict:
        """The triple that identifies this version in records: name, version, sha256."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def set_sha256(images: list[ImageEntry], spec: PreprocessSpec) -> str:
    """Hash a set's content: sorted image hashes, their label hashes, and the preprocessing.

    Order and file names do not count; a relabelled image or any spec change does.
    """
    pairs = sorted((e.sha256, e.label_sha256 or "") for e in images)
    body = {"images": [p[0] for p in pairs], "labels": [p[1] for p in pairs], "spec": spec.model_dump()}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def now_iso() -> str:
    """The current UTC time, ISO 8601, second precision."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def check_name(name: str) -> str:
    """Return ``name`` if it can be a set folder name, else raise ConfigError-like CalibrationError."""
    if not _NAME_RE.match(name):
        raise CalibrationError(
            f"invalid calibration set name {name!r}",
            "use letters, digits, '.', '_' or '-' (max 64 characters, no '/' or '@')",
        )
    return name


def read_manifest(path: Path) -> Manifest:
    """Parse a manifest file.

    Raises:
        CalibrationError: The file is missing, not JSON, or does not match the schema.
    """
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise CalibrationError(
            f"manifest not found: {path}", "import the set first (edgekit calib import)"
        ) from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CalibrationError(
            f"{path} is not a valid calibration manifest ({where}: {first['msg']})",
            "the file was edited or is corrupt; re-import the set",
        ) from exc


def write_version(set_dir: Path, manifest: Manifest) -> None:
    """Write ``versions/v<k>.json`` then ``manifest.json`` (the commit point), each atomically."""
    data = manifest.model_dump(mode="json")
    atomic_write_json(set_dir / VERSIONS / f"v{manifest.version}.json", data)
    atomic_write_json(set_dir / MANIFEST, data)


def list_versions(set_dir: Path) -> list[int]:
    """Version numbers stored under ``versions/``, ascending."""
    folder = set_dir / VERSIONS
    found = (re.fullmatch(r"v(\d+)\.json", p.name) for p in folder.iterdir()) if folder.is_dir() else ()
    return sorted(int(m.group(1)) for m in found if m)
