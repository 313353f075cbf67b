"""Stores, and `open_store`: a store and the bus that goes with it, from a URL.

=================================================  ======================================
URL                                                Backend
=================================================  ======================================
``memory://``                                      `MemoryStore` and `MemoryBus`, in this
                                                   process (nothing to install)
``redis://``, ``rediss://`` (TLS), ``unix://``     one Redis or Valkey server
``redis+sentinel://``, ``rediss+sentinel://``      a master behind Sentinel
``redis+cluster://``, ``rediss+cluster://``        Redis Cluster
=================================================  ======================================

The Redis forms (credentials, hosts, database, Sentinel options) are those of
`taskward._redis`. Redis support is the ``redis`` extra
(``pip install 'taskward[redis]'``), imported only when such a URL is opened.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .base import Retention
from .keys import DEFAULT_PREFIX, Keys

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._pulse import Pulse
    from .._records import TaskEvent
    from ..bus.base import Bus
    from .base import Store

__all__ = ["MEMORY_SCHEMES", "REDIS_SCHEMES", "Backend", "Connection", "open_store"]

MEMORY_SCHEMES = ("memory",)
REDIS_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)
_SCHEMES = ", ".join(f"{scheme}://" for scheme in (*MEMORY_SCHEMES, *REDIS_SCHEMES))


class Connection(Protocol):
    """What a backend's owner closes when it is done with the backend."""

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Backend:
    """A store, the bus that goes with it, and what their user must look after.

    `connection`: what the user must close (``await connection.aclose()``) once
    done with store and bus, or None if nothing. `pulse(instance_id, ttl,
    interval)`: a liveness `Pulse` for an instance, not started (None where no
    synchronous twin of the connection can be made), or None where liveness
    needs no thread (in process). `encode_events`: where store and bus share a
    server, encodes events for `WriteBatch.notice`, so that a write carries its
    events in the same round trip; None otherwise.
    """

    store: Store
    bus: Bus
    connection: Connection | None
    pulse: Callable[[str, float, float], Pulse | None] | None
    encode_events: Callable[[Sequence[TaskEvent]], str | None] | None


def open_store(
    url: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    retention: Retention | None = None,
    secret: str | bytes | None = None,
    socket_timeout: float | None = None,
    connect_timeout: float | None = None,
) -> Backend:
    """The backend a URL names (see the module docstring). No I/O happens here.

    `prefix` namespaces every key of a Redis backend (checked for memory too, so
    a setting that fails in production fails in development). `retention`
    applies to the store (`Retention()` if None); `secret` signs the commands of
    a Redis bus; `socket_timeout` and `connect_timeout` (seconds; None for the
    defaults, 5 s and 2 s) bound every Redis command and connection. Raises ValueError for anything but a URL of an accepted scheme,
    and ImportError, naming the extra to install, when Redis support is missing.
    """
    scheme, rest = _split(url)
    Keys(prefix)
    if retention is None:
        retention = Retention()
    if scheme in MEMORY_SCHEMES:
        if rest:
            raise ValueError(f"a memory:// URL takes nothing after the scheme, not {rest!r}")
        from ..bus.memory import MemoryBus
        from .memory import MemoryStore

        return Backend(MemoryStore(retention), MemoryBus(), None, None, None)
    try:
        importlib.import_module("redis")
    except ImportError as exc:
        raise ImportError(
            f"{scheme}:// URLs need taskward's Redis support: pip install 'taskward[redis]'"
        ) from exc
    from .._backends import open_redis

    return open_redis(
        url,
        prefix=prefix,
        retention=retention,
        secret=secret,
        socket_timeout=socket_timeout,
        connect_timeout=connect_timeout,
    )


def _split(url: object) -> tuple[str, str]:
    """The scheme (lower case) of a URL of an accepted scheme, and what follows ``://``."""
    scheme, sep, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
    scheme = scheme.lower()
    if not sep or scheme not in (*MEMORY_SCHEMES, *REDIS_SCHEMES):
        raise ValueError(f"not a store URL: {_shown(url)}; use {_SCHEMES}")
    return scheme, rest


def _shown(url: object) -> str:
    """What an error message shows of a URL: no credentials."""
    if not isinstance(url, str):
        return f"{type(url).__name__} object"
    scheme, sep, rest = url.partition("://")
    return repr(scheme + sep + rest.rpartition("@")[2] if sep else url.rpartition("@")[2])
