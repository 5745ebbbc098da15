"""The run history (a SQLite index of the run folders), regression gates against it, and its dashboard."""

from edgekit.history.gates import Tolerances, Verdict, gate_run
from edgekit.history.index import History, RunRow

__all__ = ["History", "RunRow", "Tolerances", "Verdict", "gate_run"]
