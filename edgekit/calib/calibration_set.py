"""A loaded, verifiable calibration set: iterate it through THE preprocessing, feed it to quantizers."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.calib.manifest import (
    IMAGES,
    LABELS,
    MANIFEST,
    VERSIONS,
    Manifest,
    list_versions,
    read_manifest,
    set_sha256,
)
from edgekit.core.errors import CalibrationError
from edgekit.core.files import sha256_file
from edgekit.data.preprocess import PreprocessSpec, preprocess_file

_MAX_LISTED = 10


def parse_ref(text: str) -> tuple[str, int | None]:
    """Split ``name@v3`` / ``name@3`` / ``name`` into (name, version or None).

    Raises:
        CalibrationError: The version part is not a positive integer.
    """
    if "@" not in text:
        return text, None
    name, _, ver = text.rpartition("@")
    digits = ver[1:] if ver[:1] in ("v", "V") else ver
    if not digits.isdigit() or int(digits) < 1:
        raise CalibrationError(f"bad version in {text!r}", "write NAME@v<k>, e.g. coco-val@v2")
    return name, int(digits)


def _resolve_dir(name_or_path: str | Path, root: str | Path) -> Path:
    path = Path(name_or_path)
    if path.name == MANIFEST and path.is_file():
        return path.parent
    if (path / MANIFEST).is_file() and (path.is_absolute() or len(path.parts) > 1):
        return path
    candidate = Path(root) / str(name_or_path)
    if (candidate / MANIFEST).is_file():
        return candidate
    known = sorted(p.parent.name for p in Path(root).glob(f"*/{MANIFEST}"))
    raise CalibrationError(
        f"no calibration set {str(name_or_path)!r} under {root}/"
        + (f" (sets there: {', '.join(known)})" if known else " (no sets there)"),
        "import it with `edgekit calib import SRC --name NAME`, or point --calib-root at the folder "
        "that holds it",
    )


class CalibrationSet:
    """One version of a managed calibration set.

    Args:
        set_dir: The set folder (holding ``manifest.json``).
        manifest: The manifest of the version to use.

    Example:
        >>> cs = CalibrationSet.load("shapes-calib")  # doctest: +SKIP
        >>> arrays = cs.arrays(spec=PreprocessSpec(input_size=320))  # doctest: +SKIP
        >>> reader = cs.as_ort_reader("images", limit=64, spec=model_spec)  # doctest: +SKIP
    """

    def __init__(self, set_dir: Path, manifest: Manifest) -> None:
        self.dir = Path(set_dir)
        self.manifest = manifest

    @classmethod
    def load(
        cls, name_or_path: str | Path, root: str | Path = "calibration", version: int | None = None
    ) -> CalibrationSet:
        """Load a set by name (``NAME`` or ``NAME@v<k>``) under ``root``, or by folder path.

        Raises:
            CalibrationError: The set or the requested version does not exist.
        """
        text = str(name_or_path)
        if "@" in Path(text).name:
            text, at_version = parse_ref(text)
            version = version if version is not None else at_version
        set_dir = _resolve_dir(text, root)
        if version is None:
            return cls(set_dir, read_manifest(set_dir / MANIFEST))
        path = set_dir / VERSIONS / f"v{version}.json"
        if not path.is_file():
            have = ", ".join(f"v{v}" for v in list_versions(set_dir)) or "none"
            raise CalibrationError(
                f"calibration set {set_dir.name!r} has no version {version} (versions: {have})",
                "pick one of the listed versions (edgekit calib show NAME lists them)",
            )
        return cls(set_dir, read_manifest(path))

    @property
    def name(self) -> str:
        """The set's name."""
        return self.manifest.name

    @property
    def version(self) -> int:
        """The loaded version number."""
        return self.manifest.version

    @property
    def sha256(self) -> str:
        """Content hash over image hashes, label hashes and the preprocessing spec."""
        return self.manifest.sha256

    @property
    def count(self) -> int:
        """Number of images in this version."""
        return self.manifest.count

    @property
    def spec(self) -> PreprocessSpec:
        """The default preprocessing recorded at import; a model's own spec replaces it when used.

        The images are the asset: :meth:`arrays` preprocesses them with the spec of the model being
        calibrated, so one set serves a 160 px and a 320 px model alike.
        """
        return self.manifest.preprocess

    def ref(self) -> dict:
        """``{"name", "version", "sha256"}`` for records and artifact sidecars."""
        return self.manifest.ref()

    def image_paths(self, limit: int | None = None) -> list[Path]:
        """Absolute paths of the stored images, in manifest order (first ``limit`` only if given)."""
        entries = self.manifest.images if limit is None else self.manifest.images[: max(0, limit)]
        return [self.dir / e.file for e in entries]

    def __repr__(self) -> str:
        return f"CalibrationSet({self.name!r}, v{self.version}, {self.count} images, {self.sha256[:12]})"

    # --- integrity ------------------------------------------------------------------------------------

    def verify(self) -> CalibrationSet:
        """Re-hash every file of this version and look for files no version refers to.

        Returns:
            self, so that ``CalibrationSet.load(n).verify()`` chains.

        Raises:
            CalibrationError: The set is empty, the manifest was edited, or a file is missing, changed or
                extra; the message names every such file (up to 10).
        """
        m = self.manifest
        if m.count == 0 or not m.images:
            raise CalibrationError(
                f"calibration set {m.name!r} v{m.version} is empty", "re-import it from a folder with images"
            )
        problems = self._manifest_problems() + self._file_problems() + self._extra_files()
        if problems:
            shown = problems[:_MAX_LISTED] + (
                [f"... and {len(problems) - _MAX_LISTED} more"] if len(problems) > _MAX_LISTED else []
            )
            raise CalibrationError(
                f"calibration set {m.name!r} v{m.version} failed verification ({self.dir}):\n  "
                + "\n  ".join(shown),
                f"re-import the set (edgekit calib import {m.source.path} --name {m.name}); "
                "remove files that nothing refers to",
            )
        return self

    def _manifest_problems(self) -> list[str]:
        m = self.manifest
        out = []
        if len(m.images) != m.count:
            out.append(f"manifest says count={m.count} but lists {len(m.images)} images")
        if set_sha256(m.images, m.preprocess) != m.sha256:
            out.append("manifest.json: recorded set sha256 does not match its image list and spec (edited?)")
        return out

    def _file_problems(self) -> list[str]:
        out = []
        for e in self.manifest.images:
            out += _check_file(self.dir / e.file, e.file, e.sha256)
            if e.label_file is not None:
                out += _check_file(self.dir / e.label_file, e.label_file, e.label_sha256 or "")
        return out

    def _extra_files(self) -> list[str]:
        referenced = set()
        for v in list_versions(self.dir):
            try:
                vm = read_manifest(self.dir / VERSIONS / f"v{v}.json")
            except CalibrationError as exc:
                return [f"{VERSIONS}/v{v}.json is unreadable: {exc.message}"]
            referenced |= {e.file for e in vm.images} | {e.label_file for e in vm.images if e.label_file}
        referenced |= {e.file for e in self.manifest.images}
        out = []
        for sub in (IMAGES, LABELS):
            folder = self.dir / sub
            if folder.is_dir():
                out += [
                    f"{sub}/{p.name}: extra file (no version refers to it)"
                    for p in sorted(folder.iterdir())
                    if f"{sub}/{p.name}" not in referenced
                ]
        return out

    # --- iteration ------------------------------------------------------------------------------------

    def arrays(self, limit: int | None = None, spec: PreprocessSpec | None = None) -> Iterator[np.ndarray]:
        """Verify the set, then yield batch-1 float32 input tensors through ``preprocess_file``.

        Args:
            limit: Use only the first ``limit`` images (manifest order is the sampling order, so a prefix
                of a stratified set is still balanced).
            spec: The preprocessing of the model being calibrated (default: the set's own :attr:`spec`).
        """
        self.verify()
        return self._iter_arrays(limit, spec)

    def _iter_arrays(
        self, limit: int | None = None, spec: PreprocessSpec | None = None
    ) -> Iterator[np.ndarray]:
        spec = spec or self.spec
        for path in self.image_paths(limit):
            with warnings.catch_warnings():
                # Gray/RGBA conversion was reported once at import and is recorded in the manifest.
                warnings.filterwarnings("ignore", message=r".*image converted to RGB")
                yield preprocess_file(path, spec)[0]

    def as_ort_reader(
        self, input_name: str, limit: int | None = None, spec: PreprocessSpec | None = None
    ) -> Any:
        """An ``onnxruntime.quantization.CalibrationDataReader`` over this set (verified once).

        Example:
            >>> quantize_static(fp32, int8, cs.as_ort_reader("images"))  # doctest: +SKIP
        """
        self.verify()
        return SetDataReader(self, input_name, limit, spec)

    def torch_batches(
        self,
        batch_size: int = 8,
        limit: int | None = None,
        drop_last: bool = False,
        spec: PreprocessSpec | None = None,
    ) -> Iterator:
        """Yield ``torch.Tensor`` batches (the last one may be smaller unless ``drop_last``)."""
        import torch

        batch: list[np.ndarray] = []
        for arr in self.arrays(limit, spec):
            batch.append(arr)
            if len(batch) == batch_size:
                yield torch.from_numpy(np.concatenate(batch))
                batch = []
        if batch and not drop_last:
            yield torch.from_numpy(np.concatenate(batch))

    def export(self, fmt: str, out_dir: str | Path, **kw: Any) -> list[Path]:
        """Write this set for one quantizer; see :func:`edgekit.calib.exporters.export`."""
        from edgekit.calib.exporters import export

        return export(self, fmt, out_dir, **kw)


class SetDataReader:
    """ORT calibration reader: ``get_next()`` -> ``{input_name: array}`` or None; ``rewind()`` restarts.

    onnxruntime's ``CalibrationDataReader`` recognises any class with ``get_next`` as a subclass, so
    this module does not import onnxruntime.
    """

    def __init__(
        self,
        cs: CalibrationSet,
        input_name: str,
        limit: int | None = None,
        spec: PreprocessSpec | None = None,
    ) -> None:
        self.cs, self.input_name, self.limit, self.spec = cs, input_name, limit, spec
        self._it = cs._iter_arrays(limit, spec)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next sample as an ORT feed dict, or None when the set is exhausted."""
        arr = next(self._it, None)
        return None if arr is None else {self.input_name: arr}

    def rewind(self) -> None:
        """Start again from the first image (ORT calls this between calibration passes)."""
        self._it = self.cs._iter_arrays(self.limit, self.spec)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.get_next, None)

    def __len__(self) -> int:
        return len(self.cs.image_paths(self.limit))


def _check_file(path: Path, rel: str, expected: str) -> list[str]:
    if not path.is_file():
        return [f"{rel}: missing"]
    actual = sha256_file(path)
    if actual != expected:
        return [f"{rel}: changed (sha256 {actual[:16]}... != recorded {expected[:16]}...)"]
    return []
