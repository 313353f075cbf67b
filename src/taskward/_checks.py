"""Checks on the settings, numbers and coroutines callers hand to the manager."""

from __future__ import annotations

import math
from collections.abc import Coroutine
from types import CoroutineType

__all__ = [
    "check_int",
    "check_positive",
    "check_timings",
    "close_if_coroutine",
    "is_coroutine",
]


def check_positive(name: str, value: object, *, allow_zero: bool = False) -> None:
    """Raise `TypeError` unless `value` is a number, `ValueError` unless it is positive."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero) or math.isnan(value):
        raise ValueError(
            f"{name} must be {'non-negative' if allow_zero else 'positive'}, not {value!r}"
        )


def check_int(name: str, value: object, minimum: int) -> None:
    """Raise `TypeError` unless `value` is an int, `ValueError` if it is below `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value!r}")


def is_coroutine(obj: object) -> bool:
    """A native coroutine (checked first: the usual case, and cheap) or any `Coroutine`.

    Not asyncio.iscoroutine: on 3.11 it also accepts plain generators.
    """
    return isinstance(obj, (CoroutineType, Coroutine))


def close_if_coroutine(obj: object) -> None:
    """Close a coroutine we will not run, so it never warns "was never awaited"."""
    if isinstance(obj, Coroutine):
        obj.close()


def check_timings(
    timeout: float,
    stop_timeout: float,
    shutdown_grace: float,
    shutdown_timeout: float,
    heartbeat_interval: float,
    liveness_ttl: float,
) -> None:
    """Check the durations `TaskManager` takes, alone and together."""
    for name, value in (
        ("timeout", timeout),
        ("stop_timeout", stop_timeout),
        ("heartbeat_interval", heartbeat_interval),
        ("liveness_ttl", liveness_ttl),
    ):
        check_positive(name, value)
    for name, value in (
        ("shutdown_grace", shutdown_grace),
        ("shutdown_timeout", shutdown_timeout),
    ):
        check_positive(name, value, allow_zero=True)
    if liveness_ttl <= heartbeat_interval:
        raise ValueError("liveness_ttl must be longer than heartbeat_interval")
