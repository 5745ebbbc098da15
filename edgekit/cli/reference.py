"""``edgekit reference``: train the built-in reference detector to convergence (``make reference``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edgekit.cli.types import positive_int

EPILOG = """examples:
  edgekit reference                      # 160 px, written to edgekit/models/weights/
  edgekit reference --input-size 96      # the MCU targets' reference
  edgekit reference --out /tmp/ref       # somewhere else (then copy it in to ship it)

The schedule is stated in edgekit/models/converge.py: 10-epoch cosine cycles with warm restarts, stopped
when two cycles in a row raise the best val mAP@0.5:0.95 by less than 0.5 points. Each cycle is kept in
the cache, so an interrupted run resumes. The checkpoint is named by the hashes of the data generator's
config, the architecture and the schedule; `edgekit deploy` loads it when all three match.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``reference`` sub-command to ``subparsers``."""
    p = subparsers.add_parser(
        "reference",
        help="train the built-in reference detector to convergence (make reference)",
        description="Train the built-in reference detector on the built-in data until its val mAP plateaus.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--input-size", type=positive_int, default=160, help="network input in pixels (default 160)"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="folder for the checkpoint (default: the shipped one)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars or lines")
    p.set_defaults(func=cmd_reference)
    return p


def cmd_reference(args) -> int:
    """Run the converged training and write ``reference-<key>.pt`` plus its ``.json`` record."""
    from edgekit.data.shapes import ShapesConfig, builtin_dataset
    from edgekit.models.zoo import cache_dir, converged_reference, save_reference, shipped_dir

    out = args.out or shipped_dir()
    root = builtin_dataset(
        cache_dir(), ShapesConfig(image_size=args.input_size), progress=not args.no_progress
    )
    trained = converged_reference(
        root, input_size=args.input_size, progress=not args.no_progress, shipped=out
    )
    target = out / trained.path.name
    if trained.path != target:
        save_reference(target, trained.model, trained.metrics)
    m = trained.metrics
    sys.stderr.write(
        f"{target}: kept cycle {m['kept_cycle'] + 1} ({m['epochs']:g} epochs of {m['total_epochs']:g}, "
        f"stopped on {m['stopped']}), val mAP@0.5 {m['map50']:.4f}, mAP@0.5:0.95 {m['map50_95']:.4f}, "
        f"{m['wall_s'] / 60:.1f} min\n"
    )
    return 0
