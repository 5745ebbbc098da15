"""Import images into a managed calibration set: pick, validate, copy content-addressed, version.

Sources: a folder of images (searched recursively), a YOLO dataset split (``data.yaml`` present, or
``from_dataset=True``), or a list file (one image path per line, relative to the list file; ``#`` comments).

Sampling returns a full *preference order*; the importer walks it and keeps the first ``count`` usable
images, so the manifest order is the sampling order (a prefix of a stratified set stays balanced).
Stratified sampling needs labels. Box sizes use the COCO thresholds (area < 32² small, < 96² medium, else
large) measured in **network-input pixels**, after the box is scaled like its image.

Bad input: a corrupt image stops the import naming the file, unless ``skip_bad`` (then it is left out and
recorded in the manifest's warnings). Nothing is written until everything has been read: files are
staged in a temp folder beside the set and moved in only at the end, the manifest last.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from edgekit.calib.calibration_set import CalibrationSet
from edgekit.calib.manifest import (
    IMAGES,
    LABELS,
    MANIFEST,
    ImageEntry,
    Manifest,
    SourceInfo,
    check_name,
    now_iso,
    read_manifest,
    set_sha256,
    write_version,
)
from edgekit.calib.sampling import input_areas, stratified_order
from edgekit.core.errors import CalibrationError, ConfigError, DataError
from edgekit.core.files import sha256_bytes
from edgekit.data.dataset import YoloDataset, read_label_file
from edgekit.data.preprocess import IMAGE_SUFFIXES, PreprocessSpec, load_image


@dataclass
class Candidate:
    """One image the source offers; ``label_path`` is set for dataset sources (file may not exist)."""

    path: Path
    source_name: str
    label_path: Path | None = None
    num_classes: int = 0


@dataclass
class ImportResult:
    """What an import did: the set (new or unchanged version) and everything worth telling the user."""

    set: CalibrationSet
    new_version: bool
    previous_version: int | None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the CLI."""
        cs = self.set
        if not self.new_version:
            return f"{cs.name}: content and preprocessing unchanged, still v{cs.version} ({cs.sha256[:12]})"
        was = f" (was v{self.previous_version})" if self.previous_version else ""
        return f"{cs.name}: wrote v{cs.version}{was}, {cs.count} images, sha256 {cs.sha256[:12]}"


def import_set(
    src: str | Path,
    name: str,
    *,
    root: str | Path = "calibration",
    from_dataset: bool | None = None,
    split: str = "calib",
    count: int | None = None,
    seed: int = 0,
    strategy: Literal["random", "stratified"] = "random",
    spec: PreprocessSpec | None = None,
    skip_bad: bool = False,
    progress: bool = False,
) -> ImportResult:
    """Create or update the calibration set ``name`` under ``root`` from ``src``.

    Args:
        src: Image folder, YOLO dataset folder, or list file.
        name: Set name (folder name under ``root``).
        root: Folder holding all sets.
        from_dataset: Treat ``src`` as a YOLO dataset; None = auto (``src/data.yaml`` exists).
        split: Dataset split to read.
        count: Images to keep (None = all usable images).
        seed: Sampling seed.
        strategy: ``random`` or ``stratified`` (classes x object sizes; needs labels).
        spec: Preprocessing the set is made for (default ``PreprocessSpec()``).
        skip_bad: Leave unreadable images out (recorded) instead of refusing the import.
        progress: Show a progress bar.

    Returns:
        ImportResult; ``new_version`` is False when content and spec equal the current version.

    Raises:
        CalibrationError: No usable images, fewer than ``count``, or bad arguments.
        DataError: A source image or label file is unreadable (names it).

    Example:
        >>> r = import_set("data/shapes/images/val", "shapes-calib", count=64)  # doctest: +SKIP
        >>> print(r.summary())  # doctest: +SKIP
    """
    check_name(name)
    spec = spec or PreprocessSpec()
    _check_args(count, strategy)
    source, candidates, class_names = collect_candidates(Path(src), from_dataset, split)
    source = source.model_copy(update={"strategy": strategy, "seed": seed, "requested_count": count})
    notes: list[str] = []
    order = _order(candidates, strategy, seed, spec, skip_bad, notes)
    set_dir = Path(root) / name
    if set_dir.exists() and not (set_dir / MANIFEST).is_file():
        raise CalibrationError(
            f"{set_dir} exists but is not a calibration set", "remove it or choose another name"
        )
    Path(root).mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.import.", suffix=".tmp", dir=root))
    try:
        entries = _stage_images(order, count, spec, stage, skip_bad, notes, progress)
        if not entries:
            raise CalibrationError(
                f"no usable images in {src}", "add readable images, or fix the ones skipped"
            )
        if count is not None and len(entries) < count:
            raise CalibrationError(
                f"asked for {count} images but {src} has only {len(entries)} usable ones",
                "lower --count or omit it to take every image",
            )
        return _commit(stage, set_dir, entries, spec, source, class_names, notes)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _check_args(count: int | None, strategy: str) -> None:
    if count is not None and count < 1:
        raise ConfigError(f"--count must be >= 1, got {count}", "omit --count to take every image")
    if strategy not in ("random", "stratified"):
        raise ConfigError(f"unknown strategy {strategy!r}", "use 'random' or 'stratified'")


# --- sources --------------------------------------------------------------------------------------------


def collect_candidates(
    src: Path, from_dataset: bool | None, split: str
) -> tuple[SourceInfo, list[Candidate], list[str] | None]:
    """List the images ``src`` offers, with labels for datasets.

    Raises:
        DataError: ``src`` does not exist, a list entry is missing, or the dataset layout is wrong.
        CalibrationError: The folder holds no images.
    """
    if not src.exists():
        raise DataError(f"calibration source not found: {src}", "pass an image folder, dataset or list file")
    if src.is_file():
        return SourceInfo(path=str(src), kind="list"), _from_list(src), None
    if from_dataset is None:
        from_dataset = (src / "data.yaml").is_file()
    if from_dataset:
        ds = YoloDataset(src, split)
        cands = [
            Candidate(p, p.relative_to(src).as_posix(), ds.label_path(p), ds.num_classes)
            for p in ds.image_paths
        ]
        return SourceInfo(path=str(src), kind="dataset", split=split), cands, ds.names
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(
            f"no images in {src} (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)",
            "point at a folder with images, or at a YOLO dataset with --from-dataset",
        )
    return (
        SourceInfo(path=str(src), kind="folder"),
        [Candidate(p, p.relative_to(src).as_posix()) for p in files],
        None,
    )


def _from_list(list_file: Path) -> list[Candidate]:
    out = []
    for lineno, raw in enumerate(list_file.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line) if Path(line).is_absolute() else list_file.parent / line
        if not path.is_file():
            raise DataError(
                f"{list_file}:{lineno}: image not found: {line}", "paths are relative to the list file"
            )
        out.append(Candidate(path, line))
    if not out:
        raise CalibrationError(f"list file {list_file} names no images", "write one image path per line")
    return out


# --- sampling -------------------------------------------------------------------------------------------


def _order(
    cands: list[Candidate], strategy: str, seed: int, spec: PreprocessSpec, skip_bad: bool, notes: list[str]
) -> list[Candidate]:
    if strategy == "random":
        return [cands[i] for i in np.random.default_rng(seed).permutation(len(cands))]
    if any(c.label_path is None for c in cands):
        raise ConfigError(
            "stratified sampling needs labels; this source has none",
            "import a YOLO dataset (--from-dataset --split S) or use --strategy random",
        )
    labelled = [(c, lab) for c in cands if (lab := _read_labels(c, spec, skip_bad, notes)) is not None]
    order = stratified_order([lab for _, lab in labelled], seed)
    return [labelled[i][0] for i in order]


def _read_labels(c: Candidate, spec: PreprocessSpec, skip_bad: bool, notes: list[str]) -> tuple | None:
    from PIL import Image

    try:
        with Image.open(c.path) as im:
            width, height = im.size
    except (OSError, SyntaxError, ValueError) as exc:
        return _bad(c, f"cannot read image header: {exc}", skip_bad, notes)
    boxes, classes = read_label_file(c.label_path, width, height, c.num_classes)
    return classes, input_areas(boxes, width, height, spec)


# --- staging and commit ---------------------------------------------------------------------------------


def _stage_images(
    order: list[Candidate],
    count: int | None,
    spec: PreprocessSpec,
    stage: Path,
    skip_bad: bool,
    notes: list[str],
    progress: bool,
) -> list[ImageEntry]:
    from rich.console import Console
    from rich.progress import Progress

    (stage / IMAGES).mkdir()
    target = len(order) if count is None else count
    entries: list[ImageEntry] = []
    seen: dict[str, str] = {}
    with Progress(console=Console(stderr=True), disable=not progress, transient=True) as bar:
        task = bar.add_task("importing images", total=target)
        for cand in order:
            if len(entries) >= target:
                break
            entry = _stage_one(cand, spec, stage, seen, skip_bad, notes)
            if entry is not None:
                entries.append(entry)
                bar.advance(task)
    return entries


def _stage_one(
    c: Candidate, spec: PreprocessSpec, stage: Path, seen: dict[str, str], skip_bad: bool, notes: list[str]
) -> ImageEntry | None:
    try:
        data = c.path.read_bytes()
    except OSError as exc:
        return _bad(c, exc.strerror or str(exc), skip_bad, notes)
    sha = sha256_bytes(data)
    if sha in seen:
        notes.append(f"{c.source_name}: duplicate of {seen[sha]} (same sha256 {sha[:16]}), stored once")
        return None
    info = _inspect_image(c, skip_bad, notes)
    if info is None:
        return None
    (width, height, mode) = info
    seen[sha] = c.source_name
    if mode != "RGB":
        notes.append(f"{c.source_name}: {mode} image, converted to RGB when loaded (stored bytes unchanged)")
    if max(width, height) < spec.input_size:
        notes.append(
            f"{c.source_name}: {width}x{height} is smaller than the {spec.input_size}px input; upsampled"
        )
    rel = f"{IMAGES}/{sha[:16]}{c.path.suffix.lower()}"
    (stage / rel).write_bytes(data)
    label_rel, label_sha = _stage_label(c, width, height, stage)
    return ImageEntry(
        file=rel,
        sha256=sha,
        width=width,
        height=height,
        bytes=len(data),
        source_name=c.source_name,
        mode=mode,
        label_file=label_rel,
        label_sha256=label_sha,
    )


def _inspect_image(c: Candidate, skip_bad: bool, notes: list[str]) -> tuple[int, int, str] | None:
    from PIL import Image

    try:
        with Image.open(c.path) as im:
            mode = im.mode
        height, width = load_image(c.path, convert=True).shape[:2] if mode == "RGB" else _quiet_load(c.path)
    except (OSError, SyntaxError, ValueError) as exc:
        return _bad(c, str(exc), skip_bad, notes)
    except DataError as exc:
        return _bad(c, exc.message, skip_bad, notes)
    return width, height, mode


def _quiet_load(path: Path) -> tuple[int, int]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_image(path, convert=True).shape[:2]


def _bad(c: Candidate, why: str, skip_bad: bool, notes: list[str]) -> None:
    if not skip_bad:
        raise DataError(
            f"cannot import {c.source_name} ({c.path}): {why}",
            "remove or replace this image, or pass --skip-bad to leave unreadable images out (recorded)",
        )
    notes.append(f"{c.source_name}: skipped, unreadable ({why})")
    return None


def _stage_label(c: Candidate, width: int, height: int, stage: Path) -> tuple[str | None, str | None]:
    if c.label_path is None:
        return None, None
    # A missing label file means "no objects" in YOLO datasets; store it as an empty file.
    text = c.label_path.read_bytes() if c.label_path.is_file() else b""
    read_label_file(c.label_path, width, height, c.num_classes)  # refuses malformed lines, naming them
    sha = sha256_bytes(text)
    rel = f"{LABELS}/{sha[:16]}.txt"
    (stage / LABELS).mkdir(exist_ok=True)
    (stage / rel).write_bytes(text)
    return rel, sha


def _commit(
    stage: Path,
    set_dir: Path,
    entries: list[ImageEntry],
    spec: PreprocessSpec,
    source: SourceInfo,
    class_names: list[str] | None,
    notes: list[str],
) -> ImportResult:
    current = read_manifest(set_dir / MANIFEST) if (set_dir / MANIFEST).is_file() else None
    sha = set_sha256(entries, spec)
    if current is not None and current.sha256 == sha:
        return ImportResult(CalibrationSet(set_dir, current), False, current.version, notes)
    manifest = Manifest(
        name=set_dir.name,
        version=(current.version + 1) if current else 1,
        created=now_iso(),
        source=source,
        count=len(entries),
        images=entries,
        preprocess=spec,
        sha256=sha,
        has_labels=entries[0].label_file is not None,
        class_names=class_names,
        warnings=notes,
    )
    if current is None:
        write_version(stage, manifest)
        stage.replace(set_dir)
    else:
        _merge(stage, set_dir)
        write_version(set_dir, manifest)
    return ImportResult(CalibrationSet(set_dir, manifest), True, current.version if current else None, notes)


def _merge(stage: Path, set_dir: Path) -> None:
    """Move the staged content-addressed files into the set folder."""
    for sub in (IMAGES, LABELS):
        if not (stage / sub).is_dir():
            continue
        (set_dir / sub).mkdir(exist_ok=True)
        for f in (stage / sub).iterdir():
            # Same name = same content by construction; replacing also heals a tampered copy.
            f.replace(set_dir / sub / f.name)
