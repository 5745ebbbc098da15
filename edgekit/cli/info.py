"""``edgekit targets`` and ``edgekit doctor``: what edgekit knows and what is installed."""

from __future__ import annotations

from edgekit.cli.output import _console


def add_parser(sub) -> None:
    """Add this command's parser to ``sub`` (the ``edgekit`` subcommands)."""
    p = sub.add_parser("targets", help="list the boards edgekit knows")
    p.set_defaults(func=cmd_targets)
    p = sub.add_parser("doctor", help="runtimes installed here and what each extra adds")
    p.set_defaults(func=cmd_doctor)


def cmd_targets(args) -> int:
    """Handle ``edgekit targets``."""
    from rich.table import Table

    from edgekit.core.config import all_targets
    from edgekit.core.registry import BACKENDS

    status = {e.name: e.status for e in BACKENDS.available()}
    table = Table(title="targets (targets/*.yaml)")
    for col in ("name", "aliases", "backend", "precision", "input", "connection", "backend status"):
        table.add_column(col)
    for t in all_targets().values():
        table.add_row(
            t.name,
            ", ".join(t.aliases),
            t.backend,
            t.precision,
            str(t.input_size),
            t.connection.type,
            status.get(t.backend, "unknown"),
        )
    _console().print(table)
    return 0


def cmd_doctor(args) -> int:
    """Handle ``edgekit doctor``."""
    from rich.markup import escape
    from rich.table import Table

    from edgekit.core.registry import BACKENDS

    table = Table(title="backends")
    for col in ("backend", "status", "extra to install"):
        table.add_column(col)
    for e in BACKENDS.available():
        # escape: rich would read "[mnn]" as markup and print "pip install 'edgekit'"
        table.add_row(e.name, e.status, escape(f"pip install 'edgekit[{e.extra}]'") if e.extra else "-")
    _console().print(table)
    return 0
