"""Regression gates against history: a run compared with its baseline run on the same board and model.

A baseline is chosen among the indexed runs of the same item (target, board kind, model sha256, recipe,
calibration set; :meth:`RunRow.key`) that finished ``ok``, older than the run:

- ``last``: the newest of them (on the same device when one ran there, else on another board of the kind);
- a run id: that run, which must be of the same item;
- a git ref (``HEAD~1``, a tag, a commit): the newest of them made from that commit.

Two gates, with stated tolerances:

- **mAP** (``map50_95``): a drop of more than ``map_drop_pt`` points fails.
- **p99 latency**: a rise fails when it is more than ``p99_rise_pct`` percent *and* more than
  ``noise_k`` times the larger latency standard deviation the two benches measured, so noise alone never
  fails a run. Emulator time is not compared (it is not board time).

A figure missing on either side is "not compared", said with the reason, and never passes as 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from edgekit.core.errors import ConfigError
from edgekit.history.index import History, RunRow

DEFAULT_MAP_DROP_PT = 0.5
DEFAULT_P99_RISE_PCT = 10.0
NOISE_K = 2.0


@dataclass(frozen=True)
class Tolerances:
    """What counts as a regression: mAP drop in points, p99 rise in percent, and the noise multiple."""

    map_drop_pt: float = DEFAULT_MAP_DROP_PT
    p99_rise_pct: float = DEFAULT_P99_RISE_PCT
    noise_k: float = NOISE_K


@dataclass
class Check:
    """One gate's verdict: ``passed`` is ``None`` when it could not be compared (``note`` says why).

    ``change`` is what ``limit`` applies to, positive when worse: the mAP drop in points, the p99 rise in %.
    """

    gate: str
    baseline: float | None
    value: float | None
    change: float | None
    limit: float
    passed: bool | None
    note: str = ""

    def line(self) -> str:
        """One line for a terminal or CI log."""
        if self.passed is None:
            return f"{self.gate}: not compared ({self.note})"
        verdict = "ok" if self.passed else "REGRESSION"
        return f"{self.gate}: {verdict}: {self.baseline:.4g} -> {self.value:.4g} ({self.note})"


@dataclass
class Verdict:
    """A run against its baseline: the checks, and whether any failed."""

    run_id: str
    baseline_id: str | None
    checks: list[Check]
    note: str = ""

    @property
    def regressions(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if c.passed is False]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {**asdict(self), "regressions": [c.gate for c in self.regressions]}

    def lines(self) -> list[str]:
        """The verdict for a terminal: the baseline, then one line per gate."""
        head = (
            f"{self.run_id} against {self.baseline_id}" if self.baseline_id else f"{self.run_id}: no baseline"
        )
        return [head + (f" ({self.note})" if self.note else ""), *("  " + c.line() for c in self.checks)]


def resolve_commit(ref: str) -> str | None:
    """The commit ``ref`` names in edgekit's own checkout, or ``None``."""
    from edgekit.report.record import git

    return git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}") or None


def find_baseline(history: History, run: RunRow, spec: str) -> tuple[RunRow | None, str]:
    """The baseline ``spec`` names for ``run``, and a note on how it was chosen.

    Raises:
        ConfigError: ``spec`` names a run that is not in the history or not of the same item, or a git ref
            that names no commit.
    """
    if spec != "last":
        named = history.get(spec, sync=False)
        if named is not None:
            if named.key() != run.key():
                raise ConfigError(
                    f"baseline {spec} is another item: {_item(named)}, not {_item(run)}",
                    "give --baseline a run of the same target, board, model, recipe and calibration set, "
                    "or --baseline last",
                )
            return named, "the run named"
    peers = [
        r
        for r in history.runs(target=run.target, board=run.board, status="ok", sync=False)
        if r.key() == run.key()
        and r.run_id != run.run_id
        and (r.created, r.run_id) < (run.created, run.run_id)
    ]
    if spec == "last":
        same = [r for r in peers if r.device == run.device]
        if same:
            return same[0], f"the last ok run on {run.device}"
        if peers:
            return peers[
                0
            ], f"the last ok run on another {run.board} ({peers[0].device}): none on {run.device}"
        return None, "no earlier ok run of this item"
    commit = resolve_commit(spec)
    if commit is None:
        raise ConfigError(
            f"--baseline {spec!r} is neither a run in the history nor a git ref of this checkout",
            "give --baseline last, a run id `edgekit history` lists, or a commit / tag / branch",
        )
    at = [r for r in peers if (r.git_commit or "").split("+")[0] == commit]
    at.sort(key=lambda r: (r.git_commit or "").endswith("+dirty"))  # a clean checkout's run first
    if at:
        return at[0], f"the newest ok run made from {spec} ({commit[:10]})"
    return None, f"no ok run of this item was made from {spec} ({commit[:10]})"


def _item(r: RunRow) -> str:
    sha = (r.model_sha256 or "?")[:10]
    return f"{r.target} on {r.board}, model {sha}, recipe {r.recipe}, calibration {r.calib_name}"


def compare(run: RunRow, base: RunRow, tol: Tolerances | None = None) -> list[Check]:
    """The gates of ``run`` against ``base``."""
    tol, checks = tol or Tolerances(), []
    if run.map50_95 is None or base.map50_95 is None:
        side = "this run" if run.map50_95 is None else "the baseline"
        checks.append(Check("map50_95", base.map50_95, run.map50_95, None, tol.map_drop_pt, None,
                            f"{side} has no mAP@0.5:0.95"))  # fmt: skip
    else:
        drop = round((base.map50_95 - run.map50_95) * 100, 3)
        checks.append(Check("map50_95", base.map50_95, run.map50_95, drop, tol.map_drop_pt,
                            drop <= tol.map_drop_pt,
                            f"{-drop:+.2f} points; a drop over {tol.map_drop_pt:g} fails"))  # fmt: skip
    checks.append(_p99(run, base, tol))
    return checks


def _p99(run: RunRow, base: RunRow, tol: Tolerances) -> Check:
    limit = tol.p99_rise_pct
    if run.emulator or base.emulator:
        return Check("p99_ms", None, None, None, limit, None, "emulator time is not board time")
    if run.p99_ms is None or base.p99_ms is None:
        side = "this run" if run.p99_ms is None else "the baseline"
        return Check("p99_ms", base.p99_ms, run.p99_ms, None, limit, None, f"{side} has no p99 latency")
    rise_ms = run.p99_ms - base.p99_ms
    rise_pct = rise_ms / base.p99_ms * 100 if base.p99_ms > 0 else 0.0
    spreads = [s for s in (run.p99_noise_ms, base.p99_noise_ms) if s is not None]
    noise = tol.noise_k * max(spreads) if spreads else 0.0
    failed = rise_pct > limit and rise_ms > noise
    note = f"{rise_pct:+.1f} % ({rise_ms:+.3f} ms); fails over {limit:g} % and over the noise {noise:.3f} ms"
    if not spreads:
        note += " (no latency spread recorded: noise taken as 0)"
    return Check("p99_ms", base.p99_ms, run.p99_ms, round(rise_pct, 2), limit, not failed, note)


def verdict(history: History, run: RunRow, spec: str, tol: Tolerances | None = None) -> Verdict:
    """``run`` against the baseline ``spec`` names in ``history`` (already synced)."""
    base, note = find_baseline(history, run, spec)
    if base is None:
        return Verdict(run.run_id, None, [], note)
    return Verdict(run.run_id, base.run_id, compare(run, base, tol), note)


def gate_run(history: History, run_id: str, spec: str = "last", tol: Tolerances | None = None) -> Verdict:
    """Compare the indexed run ``run_id`` with the baseline ``spec`` names.

    Raises:
        ConfigError: The run is not in the history, or ``spec`` is bad (see :func:`find_baseline`).
    """
    history.sync()
    run = history.get(run_id, sync=False)
    if run is None:
        raise ConfigError(
            f"no run {run_id!r} in {history.root}",
            f"`edgekit history --runs {history.root}` lists the runs it holds",
        )
    return verdict(history, run, spec, tol)


def check_spec(root: str | Path, spec: str, key: str = "--baseline") -> None:
    """Refuse, before anything runs, a baseline that names neither ``last``, a run nor a git ref.

    ``key`` is where the user gave it (deploy's ``--baseline``, a sweep file's ``baseline:``): the error
    and its hint name that.
    """
    if spec == "last" or (Path(root) / spec / "summary.json").is_file() or resolve_commit(spec) is not None:
        return  # a run folder is looked for by name: planning (a dry-run too) writes no index
    raise ConfigError(
        f"{key} {spec!r} is neither a run in {root} nor a git ref of this checkout; nothing ran",
        f"give {key} last, a run id `edgekit history` lists, or a commit / tag / branch",
    )


def against_history(
    record: dict, summary: dict, run_dir: Path, spec: str, tol: Tolerances | None = None
) -> Verdict:
    """A deploy's verdict against its baseline in the history of the runs root that holds ``run_dir``.

    The run itself need not be indexed yet: its row is made from ``record`` and ``summary``.
    """
    from edgekit.history.index import row_of

    history = History(run_dir.parent)
    history.sync()
    run = row_of(record, summary, run_dir.name)
    return verdict(history, run, spec, tol)
