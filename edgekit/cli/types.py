"""Argument types for the CLI: numbers that must be finite and in range (``nan`` is not a gate)."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type, lowest: float, inclusive: bool, what: str) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a{'n integer' if kind is int else ' number'}"
        ) from None
    if not math.isfinite(value) or value < lowest or (value == lowest and not inclusive):
        raise argparse.ArgumentTypeError(f"{text!r} must be {what}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (e.g. an allowed mAP drop in points).

    Example:
        >>> non_negative_float("0.5")
        0.5
    """
    return float(_number(text, float, 0.0, True, "a finite number >= 0"))


def positive_float(text: str) -> float:
    """A finite number > 0 (a latency limit, a schedule scale)."""
    return float(_number(text, float, 0.0, False, "a finite number > 0"))


def positive_int(text: str) -> int:
    """An integer >= 1 (threads, iterations, counts)."""
    return int(_number(text, int, 1, True, "an integer >= 1"))


def non_negative_int(text: str) -> int:
    """An integer >= 0 (a seed)."""
    return int(_number(text, int, 0, True, "an integer >= 0"))


#: Every backend's calibration methods (the plan checks the target backend has the one asked for).
CALIBRATORS = ["default", "auto", "minmax", "entropy", "percentile", "kl", "ema", "aciq"]
