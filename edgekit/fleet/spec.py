"""A sweep file (``edgekit sweep SWEEP.yaml``) and a fleet file: the grid, and the boards that run it.

A sweep is the grid models × recipes × targets × calibrators, each axis a list. Each cell is an *item*:
one deploy, with a stable id, so a re-run finds the items already finished. Every item is planned (the
same checks ``edgekit deploy --dry-run`` makes) before anything runs; a sweep naming an unknown target,
recipe or model, or a calibrator a backend lacks, is refused whole with every problem listed.

A fleet file lists boards, several of one kind where a team has them::

    boards:
      - name: pi-a
        board: raspberry-pi-4            # the board: of the targets these boards serve
        connection: {type: ssh, host: 10.0.0.11, user: pi, key_file: ~/.ssh/id_ed25519,
                     known_hosts: ~/.ssh/known_hosts}
      - name: pi-b
        ...

A target without fleet boards uses the one board its own YAML names. ``device: local`` runs an item's
artifact on this host, ``device: sim`` on the emulated board of its kind.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.core.config import SSHConnection
from edgekit.core.errors import ConfigError

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetEntry(_Strict):
    """A target of the grid, with where its artifact runs (``None``: the sweep's ``device``)."""

    name: str
    device: Literal["local", "sim"] | None = None


class SweepSpec(_Strict):
    """The sweep file.

    Attributes:
        name: The sweep's id: its items' run folders are ``<name>-<item>``; a re-run of the same name
            skips the items that finished.
        models: ``builtin``, ONNX files, or ``module:factory`` torch models.
        recipes: Compression recipes (names in ``recipes/`` or YAML paths).
        targets: Target names, or ``{name:, device:}``.
        calibrators: INT8 calibration (``default``, ``auto`` or a method); an fp32/fp16 target takes
            ``default`` only.
        device: Where every target's artifact runs unless its entry says: ``null`` (its board), ``local``
            or ``sim``.
        fleet: A fleet file (relative to the sweep file): several boards per kind.
        data / images / epochs_scale / reference / max_drop: As ``edgekit deploy`` takes them.
        baseline: Gate each item against history (``last``, a run id, a git ref), with the tolerances
            ``baseline_map_drop`` (points) and ``baseline_p99_rise`` (%).
        retries: How many times an item whose board died is tried again on another board of its kind.
    """

    name: str = Field(pattern=_NAME)
    models: list[str] = Field(default_factory=lambda: ["builtin"], min_length=1)
    recipes: list[str] = Field(default_factory=lambda: ["none"], min_length=1)
    targets: list[str | TargetEntry] = Field(min_length=1)
    calibrators: list[str] = Field(default_factory=lambda: ["default"], min_length=1)
    device: Literal["local", "sim"] | None = None
    fleet: str | None = None
    data: str | None = None
    images: str | None = None
    epochs_scale: float = Field(1.0, gt=0)
    reference: Literal["converged", "quick"] = "converged"
    max_drop: float | None = Field(None, ge=0)
    baseline: str | None = None
    baseline_map_drop: float = Field(0.5, ge=0)
    baseline_p99_rise: float = Field(10.0, ge=0)
    retries: int = Field(1, ge=0, le=10)

    @field_validator("targets")
    @classmethod
    def _entries(cls, value: list[str | TargetEntry]) -> list[str | TargetEntry]:
        return [TargetEntry(name=v) if isinstance(v, str) else v for v in value]

    def entries(self) -> list[TargetEntry]:
        """The targets as entries, with the sweep's device where an entry sets none."""
        return [
            e.model_copy(update={"device": e.device or self.device})
            for e in self.targets
            if isinstance(e, TargetEntry)
        ]


class FleetBoard(_Strict):
    """One board of the fleet: a name, its kind (a target's ``board:``) and how to reach it."""

    name: str = Field(pattern=_NAME)
    board: str
    connection: SSHConnection


class FleetSpec(_Strict):
    """The fleet file: the boards a sweep may bench on."""

    boards: list[FleetBoard] = Field(min_length=1)

    @field_validator("boards")
    @classmethod
    def _unique(cls, boards: list[FleetBoard]) -> list[FleetBoard]:
        names = [b.name for b in boards]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"board names must be unique; twice: {', '.join(twice)}")
        return boards


@dataclass
class Item:
    """One deploy of the grid: its id, its axes, and the board kind its bench leases."""

    id: str
    model: str
    recipe: str
    target: str
    calibrator: str
    device: str | None
    kind: str
    #: The items whose compress stage this one reuses (the first item of the same model and recipe);
    #: ``None``: it compresses first, or its recipe has no torch steps.
    leader: str | None = None
    run_ids: list[str] = field(default_factory=list)

    def run_id(self, sweep: str, attempt: int) -> str:
        """The run folder of ``attempt`` (1, 2, ...)."""
        return f"{sweep}-{self.id}" + (f"-try{attempt}" if attempt > 1 else "")


def _load_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found", "check the path; sweeps/example.yaml is one") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping", "see sweeps/example.yaml")
    return data


def _validated(model: type[BaseModel], data: dict[str, Any], path: Path, what: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{what} {path}: {problems}", "see sweeps/example.yaml for the keys") from None


def load_sweep(path: str | Path, name: str | None = None) -> tuple[SweepSpec, FleetSpec | None]:
    """Read a sweep file (and its fleet file); ``name`` overrides the sweep's name.

    Raises:
        ConfigError: A missing file, bad YAML, or a key or value the schema refuses (all named).
    """
    path = Path(path)
    data = _load_yaml(path, "sweep file")
    if name is not None:
        data["name"] = name
    spec = _validated(SweepSpec, data, path, "sweep file")
    fleet = None
    if spec.fleet:
        fleet_path = (path.parent / spec.fleet).resolve()
        fleet = _validated(FleetSpec, _load_yaml(fleet_path, "fleet file"), fleet_path, "fleet file")
    return spec, fleet


def load_fleet(path: str | Path) -> FleetSpec:
    """Read a fleet file (``--fleet``)."""
    path = Path(path)
    return _validated(FleetSpec, _load_yaml(path, "fleet file"), path, "fleet file")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_")[:40] or "x"


def model_tag(model: str) -> str:
    """A short, stable name for a model in item ids (``builtin``, a file's stem, a factory's name)."""
    if model == "builtin":
        return "builtin"
    last = model.split(":")[-1]
    return _slug(Path(last).stem if model.endswith((".onnx", ".pt")) else last)


def grid(spec: SweepSpec) -> list[tuple[str, str, TargetEntry, str]]:
    """Every (model, recipe, target entry, calibrator) cell, in file order."""
    return list(itertools.product(spec.models, spec.recipes, spec.entries(), spec.calibrators))
