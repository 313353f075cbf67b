"""Liveness from a thread: an instance is alive while its process is, not while its loop is free.

The manager's own heartbeat runs on the event loop. A loop blocked for longer
than `liveness_ttl` (a synchronous model load, a CPU-bound parse) would let the
instance's liveness key expire and have its running tasks reaped as `lost`,
although nothing died: the failure the prior systems have, only sooner. A
`Pulse` refreshes the same key from a daemon thread with its own synchronous
connection, so only a dead (or frozen) process goes silent. The thread only
extends the key (SET ... XX); the loop heartbeat creates it, and tells the
manager when it had lapsed (the server lost its data, or the whole process was
away), so that it re-asserts its running tasks and cancels any reaped meanwhile.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._redis import RedisConnection

__all__ = ["Pulse", "sync_client_factory"]

logger = logging.getLogger(__name__)


class Pulse:
    """Calls `beat(client)` every `interval` seconds on a daemon thread until `stop()`.

    `connect()` gives the thread's client and how to close it (when the thread ends).
    Failures are logged at debug level and retried on the next beat: an outage
    is the loop heartbeat's business.
    """

    def __init__(
        self,
        connect: Callable[[], tuple[Any, Callable[[], None]]],
        beat: Callable[[Any], object],
        interval: float,
    ) -> None:
        self._connect = connect
        self._beat = beat
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskward-pulse", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop beating and wait (up to `timeout`) for the thread to close its client."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        client, close = self._connect()
        try:
            while not self._stopping.wait(self._interval):
                try:
                    self._beat(client)
                except Exception as exc:  # noqa: BLE001 - logged; the next beat retries
                    logger.debug("liveness pulse failed: %s", exc)
        finally:
            close()


def sync_client_factory(
    connection: RedisConnection, interval: float
) -> Callable[[], tuple[Any, Callable[[], None]]] | None:
    """A maker of synchronous clients for the deployment `connection` talks to, or None.

    For a connection `connect` made from a URL (any supported kind), the
    thread's client reaches the same servers with the same credentials. For a
    client the caller passed in, only a plain TCP standalone one can be
    mirrored (its host, port, database and credentials); for others (Cluster,
    Sentinel or Unix-socket clients) there is no pulse and the loop heartbeat
    alone keeps the instance alive.

    Timeouts: the connection's own (`RedisConnection.socket_timeout` and
    `connect_timeout`), capped at `interval`: a beat the server has not
    answered by the next one is abandoned, and the next beat tries again, so
    a frozen server never holds the thread longer than that.
    """
    import redis as sync_redis
    import redis.asyncio as aioredis

    opts: dict[str, Any] = {
        "socket_timeout": _capped(connection.socket_timeout, interval),
        "socket_connect_timeout": _capped(connection.connect_timeout, interval),
    }
    target = connection.target
    if target is not None:
        if target.kind == "standalone":
            url = target.url
            return lambda: _closing(sync_redis.Redis.from_url(url, **opts))
        if target.kind == "cluster":
            from redis.cluster import ClusterNode, RedisCluster

            nodes = [ClusterNode(h, p) for h, p in target.hosts]  # type: ignore[no-untyped-call, unused-ignore]
            return lambda: _closing(
                RedisCluster(
                    startup_nodes=nodes,
                    username=target.username,
                    password=target.password,
                    ssl=target.ssl,
                    **opts,
                )
            )
        from redis.sentinel import Sentinel

        sentinel_opts = target.sentinel_options(opts)

        def master() -> tuple[Any, Callable[[], None]]:
            sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_opts)  # type: ignore[no-untyped-call, unused-ignore]
            client = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
                target.master,
                db=target.db,
                username=target.username,
                password=target.password,
                ssl=target.ssl,
                **opts,
            )

            def close() -> None:
                client.close()
                for each in sentinel.sentinels:
                    each.close()

            return client, close

        return master
    client = connection.client
    if type(client) is aioredis.Redis:
        pool = client.connection_pool
        if pool.connection_class is not aioredis.Connection:
            return None
        kw = pool.connection_kwargs
        keep = {k: kw[k] for k in ("host", "port", "db", "username", "password") if k in kw}
        return lambda: _closing(sync_redis.Redis(**keep, **opts))
    return None


def _capped(timeout: float | None, interval: float) -> float:
    return interval if timeout is None else min(timeout, interval)


def _closing(client: Any) -> tuple[Any, Callable[[], None]]:
    return client, client.close
