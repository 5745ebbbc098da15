"""Progress on stderr: a rich bar on a terminal, a plain line every ~10 s in a log, nothing when disabled."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

#: Seconds between two plain progress lines when stderr is not a terminal (a CI log, ``| tee log``).
LOG_EVERY_S = 10.0


def _fmt_elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d}"


class LineProgress:
    """Plain progress lines (``description: done/total, elapsed, info``) at most every ``every`` seconds.

    The first and the last update always print, so a short step still leaves one line in the log.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> p = LineProgress(2, "training", out, every=0.0)
        >>> p.advance(info="loss 1.2"); p.advance(info="loss 0.9")
        >>> out.getvalue().splitlines()[-1]
        'training: 2/2, 0:00 elapsed, loss 0.9'
    """

    def __init__(self, total: int | None, description: str, stream=None, every: float = LOG_EVERY_S) -> None:
        self.total, self.description, self.every = total, description, every
        self.stream = stream if stream is not None else sys.stderr
        self.done, self.info = 0, ""
        self.start = self.last = time.monotonic()
        self.printed = False

    def advance(self, n: int = 1, info: str | None = None, **fields) -> None:
        """Count ``n`` more units; print a line when ``every`` seconds passed or the step finished."""
        self.done += n
        if info is not None:
            self.info = info
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if not self.printed or finished or now - self.last >= self.every:
            self.last, self.printed = now, True
            self._line(now)

    def _line(self, now: float) -> None:
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        parts = [count, f"{_fmt_elapsed(now - self.start)} elapsed"] + ([self.info] if self.info else [])
        print(f"{self.description}: " + ", ".join(parts), file=self.stream, flush=True)


@contextlib.contextmanager
def track(total: int | None, description: str, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, info=None, **fields)``.

    On a terminal it draws a rich progress bar on stderr; when stderr is not a terminal (a CI log,
    ``make deploy … | tee log``) it prints a plain line every ~10 s instead, so a long step is never
    silent; when ``enabled`` is False (tests) it prints nothing.

    Example:
        >>> with track(10, "working", enabled=False) as advance:
        ...     for _ in range(10):
        ...         advance()
    """
    if not enabled:
        yield lambda *a, **k: None
        return
    if not sys.stderr.isatty():
        yield LineProgress(total, description).advance
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
