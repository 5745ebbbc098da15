"""``edgekit predict``: run an artifact on images and print, save or draw the detections."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edgekit.cli.types import positive_int
from edgekit.core.errors import ConfigError, EdgekitError

EPILOG = """examples:
  edgekit predict --artifact runs/abc/build street.jpg bus.png
  edgekit predict --artifact runs/abc/build images/*.jpg --json > detections.json
  edgekit predict --artifact runs/abc/build photo.jpg --save drawn/ --conf 0.4

Boxes are [x0, y0, x1, y1] in the original image's pixels. The images are preprocessed here with
the artifact's own preprocessing and run by the same device-side runner as `edgekit bench`.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``predict`` sub-command to ``subparsers`` (an ``argparse`` sub-parsers action)."""
    p = subparsers.add_parser(
        "predict",
        help="run an artifact on images: detections in original-image pixels",
        description="Run a built artifact on images and print the detections.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    p.add_argument("--artifact", required=True, type=Path, help="artifact folder (holds artifact.json)")
    p.add_argument("--target", default=None, help="where to run it (default: this host)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--save", type=Path, metavar="DIR", help="write each image with its boxes drawn into DIR")
    p.add_argument("--conf", type=_unit_float, default=0.25, help="minimum score (default 0.25)")
    p.add_argument("--iou", type=_unit_float, default=0.5, help="NMS IoU threshold (default 0.5)")
    p.add_argument(
        "--max-det", type=positive_int, default=100, help="maximum detections per image (default 100)"
    )
    p.add_argument(
        "--threads", type=positive_int, default=None, help="runner threads (default: artifact/target)"
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    p.set_defaults(func=run_predict)
    return p


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def run_predict(args: argparse.Namespace) -> int:
    """Handle ``edgekit predict``; returns the exit code (errors propagate as :class:`EdgekitError`)."""
    from edgekit import predict as pred

    transport, threads = resolve_target(args.target, args.artifact)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    results = pred.predict(
        args.artifact,
        list(args.images),
        transport=transport,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        threads=args.threads if args.threads is not None else threads,
        progress=progress,
    )
    if args.save is not None:
        written = pred.save_drawings(results, args.save)
        sys.stderr.write(f"drew {len(written)} image(s) into {args.save}\n")
    text = pred.to_json(results, args.artifact) if args.json else pred.format_table(results)
    sys.stdout.write(text + "\n")
    return 0


def resolve_target(name: str | None, artifact_dir: Path) -> tuple[Any, int | None]:
    """Return ``(transport, threads)`` for ``--target`` (``None`` = this host, runtime defaults).

    Raises:
        ConfigError: Unknown target, or the artifact's backend is not the target's.
        EdgekitError: The target is reached over SSH (the SSH agent is not built yet).
    """
    from edgekit.device.transport import LocalTransport

    if name is None:
        return LocalTransport(), None
    from edgekit.backends.contract.base import Artifact
    from edgekit.core.config import load_target

    target = load_target(name)
    if target.connection.type != "local":
        raise EdgekitError(
            f"target '{target.name}' is reached over {target.connection.type}; "
            "the SSH agent is not built yet",
            "omit --target to run the artifact on this host",
        )
    backend = Artifact.load(artifact_dir).backend
    if backend != target.backend:
        raise ConfigError(
            f"artifact {artifact_dir} is a {backend} artifact; target '{target.name}' runs {target.backend}",
            f"build the artifact for {target.backend}, or omit --target",
        )
    return LocalTransport(), target.runtime.threads
