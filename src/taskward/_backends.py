"""Building a store and bus from what `TaskManager(redis=...)` was given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._pulse import Pulse
    from .bus.redis import RedisBus
    from .stores.base import Retention, Store

__all__ = ["RedisBackend", "open_redis"]


@dataclass(frozen=True, slots=True)
class RedisBackend:
    """What `TaskManager(redis=...)` runs on.

    `connection` is closed by the manager. The store publishes each flush's
    events with its write (encoded by `bus.encode`), in the same round trip,
    since both talk to the same server. `pulse(instance_id,
    ttl, interval)` is a liveness `Pulse` for the instance (not started), or
    None where no synchronous twin of the connection can be made.
    """

    store: Store
    bus: RedisBus
    connection: Any
    pulse: Callable[[str, float, float], Pulse | None]


def open_redis(
    redis: Any, *, prefix: str, retention: Retention, secret: str | bytes | None
) -> RedisBackend:
    """The Redis store, bus and connection for a URL or a ``redis.asyncio`` client.

    Importing redis happens here, so the in-process default never needs it;
    without it the error says which extra to install.
    """
    from ._pulse import Pulse, sync_client_factory
    from ._redis import connect
    from .bus.redis import RedisBus
    from .stores.keys import Keys
    from .stores.redis import RedisStore

    keys = Keys(prefix)
    connection = connect(redis)
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

    return RedisBackend(store, bus, connection, pulse)
