"""The backends a `TaskManager` runs on: `open_backend`, and the Redis half of
`taskward.stores.open_store`, which also takes a client.

`open_store` turns a ``redis...://`` URL into a backend through `open_redis`;
`TaskManager(redis=...)` may also pass a ``redis.asyncio`` client, which only
`open_redis` accepts (a client is used as it is and never closed here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .bus.memory import MemoryBus
from .stores import Backend, open_store
from .stores.memory import MemoryStore

if TYPE_CHECKING:
    from .bus.base import Bus
    from .bus.redis import RedisBus
    from .stores.base import Retention, Store

__all__ = ["RedisBackend", "open_backend", "open_redis"]


@dataclass(frozen=True, slots=True)
class RedisBackend(Backend):
    """A `Backend` on Redis: the store publishes each flush's events with its write
    (`encode_events` is the bus's `encode`), in the same round trip, since both
    talk to the same server. `connection` is the `RedisConnection` to close."""

    bus: RedisBus


def open_redis(
    redis: Any,
    *,
    prefix: str,
    retention: Retention,
    secret: str | bytes | None,
    socket_timeout: float | None = None,
    connect_timeout: float | None = None,
) -> RedisBackend:
    """The Redis store, bus and connection for a URL or a ``redis.asyncio`` client.

    Importing redis happens here, so the in-process default never needs it. The
    timeouts (None: `taskward._redis`'s defaults) apply to clients built from a
    URL; a client passed in keeps its own.
    """
    from ._pulse import Pulse, sync_client_factory
    from ._redis import connect
    from .bus.redis import RedisBus
    from .stores.keys import Keys
    from .stores.redis import RedisStore

    keys = Keys(prefix)
    connection = connect(redis, socket_timeout=socket_timeout, connect_timeout=connect_timeout)
    store = RedisStore(connection.client, keys=keys, retention=retention)
    bus = RedisBus(connection, keys=keys, secret=secret)

    def pulse(instance_id: str, ttl: float, interval: float) -> Pulse | None:
        connect = sync_client_factory(connection, interval)
        if connect is None:
            return None
        key, ttl_ms = keys.alive(instance_id), max(1, int(ttl * 1000))
        # XX: the thread only extends a liveness the loop heartbeat created, so a
        # lapse (a lost server, a reaping) is still seen by the loop heartbeat.
        return Pulse(connect, lambda client: client.set(key, "1", px=ttl_ms, xx=True), interval)

    return RedisBackend(store, bus, connection, pulse, bus.encode)


def open_backend(redis: Any, store: Store | str | None, bus: Bus | None, **options: Any) -> Backend:
    """What `TaskManager(redis=..., store=..., bus=...)` runs on.

    A URL (as `store` or `redis`) or a `redis.asyncio` client is opened here
    (`options`: prefix, retention, secret and the timeouts); a `Store` and `Bus`
    given are used as they are; what is not given is the in-process default.
    """
    if redis is not None and (store is not None or bus is not None):
        raise ValueError("pass either redis or store/bus, not both")
    if isinstance(store, str):
        if bus is not None:
            raise ValueError("a store URL brings its own bus; pass no bus with it")
        return open_store(store, **options)
    if isinstance(redis, str):
        return open_store(redis, **options)
    if redis is not None:
        return open_redis(redis, **options)
    return Backend(
        store if store is not None else MemoryStore(options["retention"]),
        bus if bus is not None else MemoryBus(),
        None,
        None,
        None,
    )
