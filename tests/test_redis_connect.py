"""Redis URLs, connections, retries, and the store and bus on real Cluster and Sentinel setups."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio

from helpers import batch
from taskward._records import OutputChunk, TaskEvent, TaskRecord, TaskStatus
from taskward._redis import (
    CountingConnection,
    RedisTarget,
    call_with_retry,
    connect,
    parse_url,
    server_command_count,
)
from taskward.bus.redis import RedisBus
from taskward.errors import StoreUnavailable
from taskward.stores.keys import Keys
from taskward.stores.redis import RedisStore
from test_redis_bus import Recorder

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio.cluster import RedisCluster

    from servers import ClusterProcesses, SentinelProcesses

# -- URL parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "rediss://u:p@h:6380/2", "unix:///tmp/redis.sock?db=1"]
)
def test_standalone_urls_are_left_to_redis_py(url: str) -> None:
    assert parse_url(url) == RedisTarget("standalone", url=url)


def test_sentinel_url() -> None:
    target = parse_url(
        "redis+sentinel://user:p%40ss@s1:26380,s2,[::1]:5000/mymaster/3"
        "?sentinel_password=sp&sentinel_username=su"
    )
    assert target == RedisTarget(
        "sentinel",
        hosts=(("s1", 26380), ("s2", 26379), ("::1", 5000)),
        master="mymaster",
        db=3,
        username="user",
        password="p@ss",
        sentinel_username="su",
        sentinel_password="sp",
    )
    assert "sp" not in repr(target)


def test_sentinel_url_defaults_and_tls() -> None:
    target = parse_url("rediss+sentinel://:secret@h:1/m")
    assert (target.hosts, target.master, target.db) == ((("h", 1),), "m", 0)
    assert (target.username, target.password, target.ssl) == (None, "secret", True)


def test_cluster_url() -> None:
    target = parse_url("redis+cluster://a:7000,b:7001")
    assert target == RedisTarget("cluster", hosts=(("a", 7000), ("b", 7001)))
    assert parse_url("rediss+cluster://u:p@a/0").ssl
    assert parse_url("REDIS+CLUSTER://a").hosts == (("a", 6379),)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:6379", "no scheme"),
        ("http://h", "unsupported"),
        ("redis+pool://h", "unsupported"),
        ("redis+sentinel://h:1", "master name"),
        ("redis+sentinel://h:1/m/0/extra", "master name"),
        ("redis+sentinel://h:1/m/x", "database"),
        ("redis+sentinel://h:1/m?password=x", "unknown parameter"),
        ("redis+cluster://h:1/3", "no path"),
        ("redis+cluster://h:1?sentinel_password=x", "unknown parameter"),
        ("redis+cluster://h:99999", "bad port"),
        ("redis+cluster://h:1,:2", "empty host"),
        ("redis+cluster://h:abc", "bad port"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url(url)


def test_error_messages_hide_passwords() -> None:
    with pytest.raises(ValueError) as info:
        parse_url("redis+cluster://user:hunter2@h:1/5")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValueError) as info:
        parse_url("redis+sentinel://user:hunter2@h:1/m?foo=bar")
    assert "hunter2" not in str(info.value)


def test_parse_url_wants_a_string() -> None:
    with pytest.raises(TypeError):
        parse_url(b"redis://h")  # type: ignore[arg-type]


# -- connections ---------------------------------------------------------------------------------


def test_a_missing_redis_package_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "try:\n    import taskward.stores.redis\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "install taskward[redis]" in out.stdout


async def test_connect_from_a_url_owns_its_client(redis_url: str) -> None:
    conn = connect(redis_url, socket_timeout=3)
    assert not conn.is_cluster
    assert "standalone" in repr(conn)
    assert await conn.client.ping()
    pubsub = await conn.open_pubsub()
    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
    await conn.aclose()
    await conn.aclose()


async def test_a_callers_client_is_not_closed(redis_client: redis.asyncio.Redis) -> None:
    conn = connect(redis_client)
    assert "client" in repr(conn)
    await conn.aclose()
    assert await redis_client.ping()
    with pytest.raises(TypeError, match="options"):
        connect(redis_client, socket_timeout=1)
    with pytest.raises(TypeError, match="URL"):
        connect(42)  # type: ignore[arg-type]


def test_connect_builds_a_sentinel_client_without_io() -> None:
    conn = connect("redis+sentinel://:mpw@127.0.0.1:1,127.0.0.1:2/mymaster/2?sentinel_password=spw")
    sentinel = conn._sentinel
    assert sentinel is not None
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinel.sentinels] == [1, 2]
    assert sentinel.sentinel_kwargs["password"] == "spw"
    assert isinstance(conn.client, redis.asyncio.Redis)
    kwargs = conn.client.connection_pool.connection_kwargs
    assert (kwargs["password"], kwargs["db"]) == ("mpw", 2)


async def test_an_unreachable_cluster_is_unavailable() -> None:
    async with connect("redis+cluster://127.0.0.1:1") as conn:
        store = RedisStore(conn.client, retry_budget=0.2)
        with pytest.raises(StoreUnavailable) as info:
            await store.start()
        assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
        bus = RedisBus(conn)
        with pytest.raises(StoreUnavailable):
            await bus.start("a", Recorder())
        await bus.aclose()


async def test_call_with_retry_retries_then_succeeds() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise redis.exceptions.ConnectionError("down")
        return "ok"

    assert await call_with_retry(flaky, budget=5) == "ok"
    assert calls == 3


async def test_call_with_retry_gives_up_after_its_budget() -> None:
    async def down() -> None:
        raise redis.exceptions.ReadOnlyError("READONLY")

    start = time.monotonic()
    with pytest.raises(redis.exceptions.ReadOnlyError):
        await call_with_retry(down, budget=0.3)
    assert time.monotonic() - start < 2

    async def silent() -> None:
        await asyncio.sleep(10)

    with pytest.raises(redis.exceptions.TimeoutError, match="no answer"):
        await call_with_retry(silent, budget=0.1)


async def test_call_with_retry_does_not_retry_other_errors() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise redis.exceptions.ResponseError("WRONGTYPE")

    with pytest.raises(redis.exceptions.ResponseError):
        await call_with_retry(broken, budget=5)
    assert calls == 1


async def test_call_with_retry_honours_a_cancellation_lost_in_an_error() -> None:
    started = asyncio.Event()

    async def swallowing() -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise redis.exceptions.ConnectionError("cancel became an error") from None

    task = asyncio.create_task(call_with_retry(swallowing, budget=30))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_call_with_retry_honours_a_cancellation_lost_in_a_result() -> None:
    started = asyncio.Event()

    async def swallowing() -> str:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "as if nothing happened"  # what redis-py sometimes does
        return "slept"

    task = asyncio.create_task(call_with_retry(swallowing, budget=30))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_counters(redis_url: str) -> None:
    conn = connect(redis_url, connection_class=CountingConnection)
    try:
        await conn.client.ping()
        before = CountingConnection.round_trips
        pipe = conn.client.pipeline(transaction=False)
        for _ in range(10):
            pipe.execute_command("PING")
        await pipe.execute()
        assert CountingConnection.round_trips - before == 1
        first = await server_command_count(conn.client)
        second = await server_command_count(conn.client)
        assert second > first
    finally:
        await conn.aclose()


# -- Cluster -----------------------------------------------------------------------------------


async def _round_trip(store: RedisStore) -> None:
    """Exercise every store method once; the store must behave as on a single server."""
    await store.start()
    now = time.time()
    await store.heartbeat("live", 30)
    await store.heartbeat("dead", 0.05)
    records = [
        TaskRecord(f"t{i}", user_id="u", item_id="chat", instance_id="live", created_at=now + i)
        for i in range(700)  # two script calls in one pipeline
    ]
    records.append(TaskRecord("doomed", instance_id="dead", created_at=now))
    await store.save(batch(records, outputs={"t1": [OutputChunk(1, "hi", now)]}, now=now))
    got = await store.get("t1")
    assert got is not None and got.user_id == "u"
    assert await store.read_output("t1") == [OutputChunk(1, "hi", now)]
    page = await store.query(user_id="u", limit=5)
    assert [r.task_id for r in page.records] == [f"t{i}" for i in range(699, 694, -1)]
    page = await store.query(user_id="u", limit=5, cursor=page.cursor)
    assert page.records[0].task_id == "t694"
    stopped = await store.request_stop("t3", now)
    assert stopped is not None and stopped.stop_requested_at == now
    assert await store.pending_stops("live") == ["t3"]
    assert (await store.running_ids_by_item("chat"))[:2] == ["t0", "t1"]
    await asyncio.sleep(0.1)
    assert [r.task_id for r in await store.reap(time.time())] == ["doomed"]
    records[0].status = TaskStatus.COMPLETED
    records[0].finished_at = now
    await store.save(batch([records[0]], now=now))
    page = await store.query(status=TaskStatus.COMPLETED)
    assert [r.task_id for r in page.records] == ["t0"]
    await store.retire("dead")
    assert len(await store.get_many(["t0", "t1", "nope"])) == 3


async def _bus_round_trip(first: RedisBus, second: RedisBus, third: RedisBus) -> None:
    handlers = [Recorder(), Recorder(), Recorder()]
    for name, bus, h in zip("abc", (first, second, third), handlers, strict=True):
        await bus.start(name, h)
    try:
        await first.send_command("c", {"op": "stop", "task_id": "x"})
        ev = [TaskEvent("progress", "t", TaskStatus.RUNNING, 1.0, "u", None)]
        await second.publish(ev)
        await handlers[2].until(lambda: bool(handlers[2].commands))
        await handlers[0].until(lambda: handlers[0].events == ev)
        await handlers[2].until(lambda: handlers[2].events == ev)
    finally:
        for bus in (first, second, third):
            await bus.aclose()


@pytest.fixture
async def cluster_conn(cluster: ClusterProcesses) -> AsyncIterator[Any]:
    conn = connect(cluster.url)
    yield conn
    await conn.aclose()


@pytest.mark.cluster
async def test_store_on_a_cluster(cluster_conn: Any, key_prefix: str) -> None:
    assert cluster_conn.is_cluster
    keys = Keys(key_prefix)
    store = RedisStore(cluster_conn.client, keys=keys)
    try:
        await _round_trip(store)
        assert await server_command_count(cluster_conn.client) > 0
    finally:
        client: RedisCluster = cluster_conn.client
        node = client.get_node_from_key(keys.all)
        assert node is not None
        found = [k async for k in client.scan_iter(match=keys.pattern, target_nodes=[node])]
        for key in found:
            await client.delete(key)


@pytest.mark.cluster
async def test_bus_on_a_cluster(cluster_conn: Any, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    # each bus of a connection listens on the next node: messages must cross nodes
    buses = [RedisBus(cluster_conn, keys=keys) for _ in range(3)]
    await _bus_round_trip(*buses)


# -- Sentinel ----------------------------------------------------------------------------------


@pytest.mark.sentinel
async def test_store_and_bus_behind_sentinel(sentinel: SentinelProcesses, key_prefix: str) -> None:
    conn = connect(sentinel.url)
    keys = Keys(key_prefix)
    try:
        await _round_trip(RedisStore(conn.client, keys=keys))
        await _bus_round_trip(*(RedisBus(conn, keys=keys) for _ in range(3)))
    finally:
        found = [k async for k in conn.client.scan_iter(match=keys.pattern)]
        if found:
            await conn.client.delete(*found)
        await conn.aclose()


@pytest.mark.sentinel
@pytest.mark.slow
async def test_pipelines_and_pubsub_survive_a_failover(
    private_sentinel: SentinelProcesses, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskward._redis")
    conn = connect(private_sentinel.url)
    store = RedisStore(conn.client, retry_budget=30)
    bus, listener = RedisBus(conn), RedisBus(conn)
    handlers = Recorder()
    try:
        await store.start()
        await bus.start("sender", Recorder())
        await listener.start("listener", handlers)
        await store.save(batch([TaskRecord("before")], now=time.time()))
        private_sentinel.kill_master()
        failover = asyncio.create_task(asyncio.to_thread(private_sentinel.wait_for_failover, 30))
        # a multi-chunk pipeline sent into the outage: retried until the new master answers
        now = time.time()
        records = [TaskRecord(f"t{i}", user_id="u", created_at=now) for i in range(900)]
        await store.save(batch(records, now=now))
        assert any("retrying" in r.getMessage() for r in caplog.records)  # it did meet the outage
        await failover
        got = await store.get("t899")
        assert got is not None and got.user_id == "u"
        host, port = private_sentinel.master.address
        direct = redis.asyncio.Redis(host=host, port=port)
        try:
            assert await direct.exists(store.keys.task("t0")) == 1
        finally:
            await direct.aclose()
        # the listener followed the master: it reconnected and hears new commands
        await handlers.until(lambda: handlers.reconnects >= 1, timeout=30)
        await bus.send_command("listener", {"op": "stop", "task_id": "t1"})
        await handlers.until(lambda: bool(handlers.commands), timeout=10)
    finally:
        await bus.aclose()
        await listener.aclose()
        await conn.aclose()
