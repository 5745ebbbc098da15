"""One rooted error hierarchy: every error a user can cause carries a message and a hint.

The CLI prints ``error: <message>`` and ``hint: <hint>`` and exits non-zero; anything that is not an
:class:`EdgekitError` is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Root of every error caused by input, environment or a device, not by a bug.

    Args:
        message: What went wrong, naming the file, key, op or host involved.
        hint: What the user can do about it.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(EdgekitError):
    """A target, recipe or option is invalid (unknown key, missing field, bad value)."""

    exit_code = 2


class MissingExtraError(EdgekitError):
    """An optional runtime is not installed; the hint names the pip extra."""


class ModelError(EdgekitError):
    """A model file is missing, corrupt or not a detector edgekit understands."""


class UnsupportedOpError(EdgekitError):
    """The model uses an op the target runtime cannot run.

    Args:
        backend: Registry name of the backend.
        ops: The unsupported op types.
        hint: What to change.
    """

    def __init__(self, backend: str, ops: list[str], hint: str = "") -> None:
        self.backend = backend
        self.ops = sorted(set(ops))
        super().__init__(
            f"backend '{backend}' cannot run op(s): {', '.join(self.ops)}",
            hint or "replace these ops in the model, or pick a target whose runtime supports them",
        )


class BudgetExceededError(EdgekitError):
    """A model does not fit the target's limits (flash, RAM, latency)."""


class CalibrationError(EdgekitError):
    """A calibration set is empty, tampered with, or does not match the target's preprocessing."""


class DataError(EdgekitError):
    """A dataset or image cannot be read or is inconsistent."""


class BuildError(EdgekitError):
    """A backend tool failed or produced an artifact its runtime cannot load."""


class CompressionError(EdgekitError):
    """A compression step cannot be applied (bad order, nothing left to prune, ...)."""


class GateError(EdgekitError):
    """A CI gate (``--max-map-drop``, ``--max-p99-ms``) failed after the run was written."""

    exit_code = 3


class DeviceError(EdgekitError):
    """Something went wrong talking to or running on the device."""


class HostUnreachableError(DeviceError):
    """The device cannot be reached (DNS, refused, timeout, dropped link)."""


class HostKeyError(DeviceError):
    """The device's host key is unknown or changed."""


class RemoteCommandError(DeviceError):
    """A command on the device exited non-zero; carries the command result.

    Args:
        result: The :class:`edgekit.device.transport.CommandResult` of the failed command.
        hint: What to check.
    """

    def __init__(self, result, hint: str = "") -> None:  # noqa: ANN001 - avoid importing device here
        self.result = result
        tail = result.tail(10)
        super().__init__(
            f"command {result.argv[0]!r} exited {result.exit_code} on the device"
            + (f":\n{tail}" if tail else ""),
            hint or "run the command by hand on the device to see the full output",
        )
