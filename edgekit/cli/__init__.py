"""The ``edgekit`` command. Thin: parse, build a request or plan, run it, print.

Errors a user can cause print ``error:`` and ``hint:`` and exit non-zero; anything else is a bug and
keeps its traceback.

The command modules, one per command, each give ``add(subparsers)``; :func:`build_parser` assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from edgekit import __version__
from edgekit.core.errors import EdgekitError

#: The command modules of this package, in the order ``edgekit --help`` lists them.
COMMANDS = (
    "deploy", "sweep", "compress", "build", "bench", "predict", "calib", "board", "reference", "report",
    "history",
    "info",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The full ``edgekit`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="edgekit",
        description="Take a trained object detector to a measured deployment on edge hardware.",
        epilog="start here:  edgekit deploy --target local   (then open the report it prints)",
    )
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        importlib.import_module(f"edgekit.cli.{command}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edgekit`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        return int(args.func(args) or 0)
    except EdgekitError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept in the run folder", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
