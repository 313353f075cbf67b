"""Building a store and bus from what `TaskManager(redis=...)` was given."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._records import TaskEvent
    from .bus.base import Bus
    from .stores.base import Retention, Store

__all__ = ["open_redis"]


def open_redis(
    redis: Any, *, prefix: str, retention: Retention, secret: str | bytes | None
) -> tuple[Store, Bus, Any, Callable[[Sequence[TaskEvent]], str | None]]:
    """A `RedisStore`, a `RedisBus`, the connection they share (for `aclose`), and
    the bus's event encoder: the store publishes each flush's events with its
    write, in the same round trip, since both talk to the same server.

    `redis` is a URL or a ``redis.asyncio`` client. Importing redis happens
    here, so the in-process default never needs it; without it the error says
    which extra to install.
    """
    from ._redis import connect
    from .bus.redis import RedisBus
    from .stores.keys import Keys
    from .stores.redis import RedisStore

    keys = Keys(prefix)
    connection = connect(redis)
    store = RedisStore(connection.client, keys=keys, retention=retention)
    bus = RedisBus(connection, keys=keys, secret=secret)
    return store, bus, connection, bus.encode
