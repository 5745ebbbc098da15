"""Progress bars (rich) that disappear when ``enabled`` is False, e.g. in tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def track(total: int | None, description: str, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)``; draws a rich progress bar on stderr when enabled.

    Example:
        >>> with track(10, "working", enabled=False) as advance:
        ...     for _ in range(10):
        ...         advance()
    """
    if not enabled:
        yield lambda *a, **k: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str | None = None, **fields) -> None:
            bar.update(task, advance=n, **({"info": info} if info is not None else {}), **fields)

        yield advance
