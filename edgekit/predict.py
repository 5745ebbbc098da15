"""Run an artifact on images through its device-side runner: detections in original-image pixels.

The host preprocesses every image with the artifact's own preprocessing spec, the agent pushes the
tensors and runs the same runner the benchmark uses, and the host applies NMS and maps the boxes back
through each image's letterbox. Nothing here decodes model outputs itself.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.contract.base import Artifact
from edgekit.core.errors import DataError, DeviceError
from edgekit.core.files import atomic_write_bytes
from edgekit.core.progress import track
from edgekit.data.preprocess import Letterbox, preprocess_file
from edgekit.device.agent import Agent, BenchPlan
from edgekit.device.transport import Transport
from edgekit.runners.detcore import nms

#: Images per runner call: bounds host memory for the stacked float tensors (640 px: ~5 MB each).
CHUNK = 32


@dataclass(frozen=True)
class Detection:
    """One detected object.

    Attributes:
        class_id: Index into the artifact's classes.
        class_name: Its name (``class<id>`` when the artifact has no names).
        score: Confidence (objectness x class probability for yolov5 heads).
        box: ``[x0, y0, x1, y1]`` in original-image pixels.
    """

    class_id: int
    class_name: str
    score: float
    box: list[float]


@dataclass(frozen=True)
class ImageDetections:
    """Detections of one image.

    Attributes:
        image: The image file.
        width: Its width in pixels.
        height: Its height in pixels.
        detections: Best first.
    """

    image: Path
    width: int
    height: int
    detections: list[Detection] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        out = asdict(self)
        out["image"] = str(self.image)
        return out


def predict(
    artifact_dir: str | Path,
    images: list[Path],
    *,
    transport: Transport | None = None,
    conf: float = 0.25,
    iou: float = 0.5,
    max_det: int = 100,
    threads: int | None = None,
    progress: bool = False,
) -> list[ImageDetections]:
    """Run the artifact on ``images`` (here, or on a device through ``transport``).

    Args:
        artifact_dir: A built artifact folder.
        images: Image files.
        transport: Where the runner runs; ``None`` = this host (:class:`LocalTransport`).
        conf: Minimum score.
        iou: NMS IoU threshold (class-aware).
        max_det: Maximum detections per image.
        threads: Runner intra-op threads; ``None`` = the artifact's setting.
        progress: Show a progress bar over the images.

    Returns:
        One :class:`ImageDetections` per image, in order.

    Raises:
        DataError: No images, or an image cannot be read.
        ModelError: The artifact is missing or tampered with.
        DeviceError: The runner failed.

    Example:
        >>> results = predict("runs/x/build", [Path("street.jpg")], conf=0.3)  # doctest: +SKIP
        >>> print(format_table(results))  # doctest: +SKIP
    """
    images = [Path(p) for p in images]
    if not images:
        raise DataError("no images to predict on", "pass one or more image files")
    artifact = Artifact.load(artifact_dir)
    if transport is None:
        from edgekit.device.transport import LocalTransport

        transport = LocalTransport()
    agent = Agent(transport)
    names = list(artifact.meta["output"].get("class_names") or [])
    results: list[ImageDetections] = []
    with track(len(images), "predicting", progress) as advance:
        for start in range(0, len(images), CHUNK):
            chunk = images[start : start + CHUNK]
            tensors, boxes = _preprocess(artifact, chunk)
            candidates = _run(agent, artifact, tensors, conf, threads)
            for path, lb, cands in zip(chunk, boxes, candidates, strict=True):
                results.append(_image_result(path, lb, nms(cands, iou, max_det), names))
            advance(len(chunk))
    return results


def _preprocess(artifact: Artifact, images: list[Path]) -> tuple[np.ndarray, list[Letterbox]]:
    spec = artifact.preprocess
    pairs = [preprocess_file(p, spec) for p in images]
    return np.concatenate([t for t, _ in pairs]), [lb for _, lb in pairs]


def _run(agent: Agent, artifact: Artifact, tensors: np.ndarray, conf: float, threads: int | None) -> list:
    # One timed iteration, no warm-up: the runner is only used for its outputs here.
    result = agent.bench(
        artifact.dir,
        BenchPlan(
            bench_input=tensors[:1],
            eval_inputs=tensors,
            warmup=0,
            min_warmup_s=0.0,
            iterations=1,
            min_seconds=0.0,
            threads=threads,
            conf=conf,
        ),
        progress=False,
    )
    if result.detections is None or len(result.detections) != len(tensors):
        got = 0 if result.detections is None else len(result.detections)
        raise DeviceError(
            f"the {artifact.runner} runner returned outputs for {got} of {len(tensors)} images",
            "the runner and edgekit versions may differ; reinstall edgekit on both sides",
        )
    return result.detections


def _image_result(path: Path, lb: Letterbox, dets: np.ndarray, names: list[str]) -> ImageDetections:
    boxes = lb.to_original(dets[:, :4]) if len(dets) else np.zeros((0, 4))
    found = [
        Detection(
            class_id=int(row[5]),
            class_name=names[int(row[5])] if int(row[5]) < len(names) else f"class{int(row[5])}",
            score=float(row[4]),
            box=[float(v) for v in box],
        )
        for row, box in zip(dets, boxes, strict=True)
    ]
    return ImageDetections(path, lb.orig_w, lb.orig_h, found)


# -- output ------------------------------------------------------------------------------------------


def to_json(results: list[ImageDetections], artifact: str | Path | None = None) -> str:
    """Return ``{"artifact": ..., "images": [{image, width, height, detections: [...]}]}`` as JSON."""
    payload = {
        "artifact": None if artifact is None else str(artifact),
        "images": [r.to_dict() for r in results],
    }
    return json.dumps(payload, indent=2)


def format_table(results: list[ImageDetections]) -> str:
    """Aligned plain-text table: one row per detection, a ``-`` row for images with none."""
    header = ("image", "class", "score", "x0", "y0", "x1", "y1")
    rows: list[tuple[str, ...]] = []
    for r in results:
        if not r.detections:
            rows.append((r.image.name, "-", "", "", "", "", ""))
        for d in r.detections:
            rows.append((r.image.name, d.class_name, f"{d.score:.3f}", *(f"{v:.1f}" for v in d.box)))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in (header, *rows)
    ]
    total = sum(len(r.detections) for r in results)
    lines.append(f"{total} detection(s) in {len(results)} image(s)")
    return "\n".join(line.rstrip() for line in lines)


# -- drawing -----------------------------------------------------------------------------------------

_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 190),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
]


def draw(image_path: str | Path, detections: list[Detection], out_path: str | Path) -> Path:
    """Draw boxes and ``name score`` labels on a copy of the image; write it atomically.

    The format follows ``out_path``'s suffix (PNG when it has none PIL knows).

    Raises:
        DataError: The image cannot be read.
    """
    from PIL import Image, ImageDraw

    from edgekit.data.preprocess import load_image

    image = Image.fromarray(load_image(image_path))
    canvas = ImageDraw.Draw(image)
    width = max(1, round(min(image.size) / 200))
    for det in detections:
        color = _PALETTE[det.class_id % len(_PALETTE)]
        canvas.rectangle(det.box, outline=color, width=width)
        _label(canvas, det, color)
    out_path = Path(out_path)
    fmt = Image.registered_extensions().get(out_path.suffix.lower(), "PNG")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return atomic_write_bytes(out_path, buffer.getvalue())


def _label(canvas: Any, det: Detection, color: tuple[int, int, int]) -> None:
    text = f"{det.class_name} {det.score:.2f}"
    x0, y0 = det.box[0], det.box[1]
    left, top, right, bottom = canvas.textbbox((0, 0), text)
    h = bottom - top + 2
    y = y0 - h if y0 >= h else y0  # above the box, or inside it at the top edge
    canvas.rectangle([x0, y, x0 + right - left + 4, y + h], fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    canvas.text((x0 + 2, y + 1 - top), text, fill=(0, 0, 0) if luminance > 150 else (255, 255, 255))


def save_drawings(results: list[ImageDetections], out_dir: str | Path) -> list[Path]:
    """Draw every result into ``out_dir`` as ``<image stem>.png`` (numbered when stems repeat)."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    seen: dict[str, int] = {}
    for r in results:
        count = seen.get(r.image.stem, 0)
        seen[r.image.stem] = count + 1
        name = r.image.stem if count == 0 else f"{r.image.stem}-{count}"
        written.append(draw(r.image, r.detections, out_dir / f"{name}.png"))
    return written
