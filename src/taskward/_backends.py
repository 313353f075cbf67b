"""The Redis half of `taskward.stores.open_store`, which also takes a client.

`open_store` turns a ``redis...://`` URL into a backend through `open_redis`;
`TaskManager(redis=...)` may also pass a ``redis.asyncio`` client, which only
`open_redis` accepts (a client is used as it is and never closed here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .stores import Backend

if TYPE_CHECKING:
    from .bus.redis import RedisBus
    from .stores.base import Retention

__all__ = ["RedisBackend", "open_redis"]


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
