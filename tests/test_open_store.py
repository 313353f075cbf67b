"""open_store: a backend (store, bus, what to close) from a URL."""

from __future__ import annotations

import sys
import time

import pytest

from helpers import batch
from taskward import TaskRecord, TaskStatus
from taskward._backends import RedisBackend, open_redis
from taskward.bus.memory import MemoryBus
from taskward.bus.redis import RedisBus
from taskward.stores import MEMORY_SCHEMES, REDIS_SCHEMES, Backend, open_store
from taskward.stores.base import InProcessStore, Retention
from taskward.stores.memory import MemoryStore
from taskward.stores.redis import RedisStore

ACCEPTED = "memory://, redis://, rediss://, unix://, redis+sentinel://"


def test_memory_is_a_store_and_bus_in_this_process_with_nothing_to_close() -> None:
    backend = open_store("memory://", retention=Retention(max_finished=7))
    assert isinstance(backend, Backend)
    assert isinstance(backend.store, MemoryStore)
    assert isinstance(backend.store, InProcessStore)
    assert isinstance(backend.bus, MemoryBus)
    assert backend.store.retention == Retention(max_finished=7)
    assert (backend.connection, backend.pulse, backend.encode_events) == (None, None, None)
    assert open_store("MEMORY://").store is not backend.store  # a store of its own each time
    assert open_store("memory://").store.retention == Retention()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/2",
        "rediss://user:pw@127.0.0.1:6380",
        "unix:///tmp/taskward-test.sock?db=1",
        "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/primary/3",
        "rediss+sentinel://127.0.0.1:26379/primary",
        "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
        "rediss+cluster://127.0.0.1:7000",
    ],
)
async def test_every_redis_scheme_gives_a_redis_backend(url: str) -> None:
    """Made without I/O: nothing connects until the store starts."""
    backend = open_store(url, prefix="app-1", retention=Retention(result_ttl=5))
    try:
        assert isinstance(backend, RedisBackend)
        assert isinstance(backend.store, RedisStore)
        assert not isinstance(backend.store, InProcessStore)
        assert backend.store.keys.prefix == "app-1"
        assert backend.store.retention == Retention(result_ttl=5)
        assert isinstance(backend.bus, RedisBus)
        assert backend.encode_events == backend.bus.encode
        assert backend.pulse is not None
    finally:
        assert backend.connection is not None
        await backend.connection.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "redis:/127.0.0.1",
        "127.0.0.1:6379",
        "",
        "memcached://h",
        "valkey+cluster://h:7000",
        3,
        None,
        b"redis://127.0.0.1",
    ],
)
def test_anything_else_is_a_value_error_naming_the_schemes(url: object) -> None:
    with pytest.raises(ValueError, match="not a store URL") as info:
        open_store(url)  # type: ignore[arg-type]
    assert ACCEPTED in str(info.value)
    assert all(f"{scheme}://" in str(info.value) for scheme in (*MEMORY_SCHEMES, *REDIS_SCHEMES))


def test_an_error_never_shows_a_password() -> None:
    with pytest.raises(ValueError, match="not a store URL") as info:
        open_store("mongodb://admin:hunter2@db.internal/tasks")
    assert "hunter2" not in str(info.value)
    assert "db.internal" in str(info.value)


def test_memory_takes_nothing_after_the_scheme() -> None:
    with pytest.raises(ValueError, match="memory://"):
        open_store("memory://somewhere")


@pytest.mark.parametrize("url", ["memory://", "redis://127.0.0.1"])
def test_the_prefix_is_checked_whatever_the_url(url: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        open_store(url, prefix="has space")


def test_redis_without_the_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'taskward\[redis\]'"):
        open_store("redis://127.0.0.1")
    assert isinstance(open_store("memory://").store, MemoryStore)


@pytest.mark.redis
async def test_a_redis_backend_works_and_closes(redis_url: str, key_prefix: str) -> None:
    backend = open_store(redis_url, prefix=key_prefix)
    assert backend.connection is not None
    try:
        await backend.store.start()
        now = time.time()
        record = TaskRecord("t", TaskStatus.RUNNING, instance_id="i", created_at=now)
        await backend.store.save(batch([record], now=now))
        assert await backend.store.get("t") == record
    finally:
        await backend.connection.aclose()
        await backend.connection.aclose()  # idempotent


@pytest.mark.redis
async def test_open_redis_takes_a_client_and_leaves_it_open(
    redis_url: str, key_prefix: str
) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        backend = open_redis(client, prefix=key_prefix, retention=Retention(), secret=None)
        assert isinstance(backend.store, RedisStore)
        assert backend.store.client is client
        assert backend.connection is not None
        await backend.connection.aclose()
        assert await client.ping()
    finally:
        await client.aclose()
