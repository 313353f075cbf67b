"""RedisStore against a real server: every Store method, retention, atomicity, outages."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio

from helpers import batch, lives
from taskward._records import OutputChunk, TaskError, TaskRecord, TaskStatus
from taskward._redis import CountingConnection, connect
from taskward.errors import StoreUnavailable
from taskward.stores._redis_codec import text
from taskward.stores.base import Retention
from taskward.stores.keys import Keys
from taskward.stores.redis import RedisStore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from servers import ServerProcess

pytestmark = pytest.mark.redis

NOW = float(int(time.time()))  # retention compares finish times with the clock


def rec(task_id: str, **kw: Any) -> TaskRecord:
    kw.setdefault("instance_id", "inst-a")
    kw.setdefault("created_at", NOW)
    kw.setdefault("updated_at", kw["created_at"])
    return TaskRecord(task_id, **kw)


def finish(
    r: TaskRecord, status: TaskStatus = TaskStatus.COMPLETED, at: float = NOW + 1
) -> TaskRecord:
    r.status = status
    r.finished_at = r.updated_at = at
    return r


@pytest.fixture
def make_store(
    redis_client: redis.asyncio.Redis, keys: Keys
) -> Callable[..., Awaitable[RedisStore]]:
    async def make(**retention: Any) -> RedisStore:
        store = RedisStore(redis_client, keys=keys, retention=Retention(**retention))
        await store.start()
        return store

    return make


@pytest.fixture
async def store(make_store: Callable[..., Awaitable[RedisStore]]) -> RedisStore:
    return await make_store()


# -- keys -------------------------------------------------------------------------


def test_keys_share_one_hash_tag_and_never_collide() -> None:
    k = Keys("app")
    names = [
        k.task("x"),
        k.output("x"),
        k.user_index("x"),
        k.item_index("x"),
        k.status_index("running"),
        k.alive("x"),
        k.instance_tasks("x"),
        k.instance_stops("x"),
        k.all,
        k.finished,
        k.instances,
        k.heartbeats,
        k.reaper_lock,
    ]
    assert all(n.startswith("{app}:") for n in names)
    assert len(set(names)) == len(names)
    # ids shaped like internal names stay inside their own kind
    assert k.task("idx:all") != k.all
    assert k.instance_tasks("a:alive") != k.alive("a:tasks")
    assert k.command_channel("x") != k.events
    assert Keys().prefix == "taskward"
    assert repr(k) == "Keys('app')"


@pytest.mark.parametrize("bad", ["", "a b", "{x}", "a*", "x" * 65])
def test_keys_refuse_bad_prefixes(bad: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Keys(bad)


def test_keys_refuse_non_str_prefix() -> None:
    with pytest.raises(TypeError):
        Keys(3)  # type: ignore[arg-type]


# -- save and read ----------------------------------------------------------------------


async def test_save_and_get_round_trip_every_field(
    store: RedisStore, redis_client: redis.asyncio.Redis, keys: Keys
) -> None:
    full = rec(
        "t1",
        name="search",
        item_id="chat-1",
        user_id="user-1",
        channel_id="c1",
        platform="slack",
        started_at=NOW + 0.5,
        progress=0.25,
        progress_message="a quarter",
        metadata={"k": [1, 2], "é": "ü"},
        max_runtime=30.0,
        result=None,
    )
    bare = rec("t2")
    await store.save(batch([full, bare], now=NOW))
    assert await store.get("t1") == full
    assert await store.get("t2") == bare
    assert await store.get("nope") is None
    assert await store.get_many(["t2", "nope", "t1"]) == [bare, None, full]
    assert await store.get_many([]) == []
    fields = await redis_client.hgetall(keys.task("t2"))
    assert set(fields) == {b"s", b"o", b"ca", b"ua"}  # None and empty fields are omitted


async def test_finished_record_keeps_result_and_error(store: RedisStore) -> None:
    ok = finish(rec("ok", result={"answer": 42, "list": [1, "two"]}))
    bad = finish(rec("bad", error=TaskError("ValueError", "no good")), TaskStatus.FAILED)
    await store.save(batch([ok, bad], now=NOW + 1))
    assert await store.get("ok") == ok
    assert await store.get("bad") == bad


async def test_a_batch_with_a_value_that_is_not_json_raises_and_writes_nothing(
    store: RedisStore,
) -> None:
    """Owners encode what tasks hand over before it reaches a store; a value that is
    still not JSON is a bug, refused before anything is sent (the flusher then
    writes the batch row by row)."""
    ok = finish(rec("ok", result=1))
    odd = finish(rec("odd", result={1, 2}))
    with pytest.raises(TypeError, match="set"):
        await store.save(batch([ok, odd], now=NOW + 1))
    assert await store.get("ok") is None


async def test_records_read_through_a_decoding_client(
    redis_url: str, keys: Keys, store: RedisStore
) -> None:
    await store.save(batch([rec("t", user_id="u", metadata={"a": 1})], now=NOW))
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        other = RedisStore(client, keys=keys)
        got = await other.get("t")
        assert got is not None and got.metadata == {"a": 1}
        page = await other.query(user_id="u")
        assert [r.task_id for r in page.records] == ["t"]
    finally:
        await client.aclose()


async def test_finishing_moves_indexes_and_starts_retention(
    store: RedisStore, redis_client: redis.asyncio.Redis, keys: Keys
) -> None:
    r = rec("t", user_id="u", item_id="i")
    await store.save(batch([r], outputs={"t": [OutputChunk(1, "x", NOW)]}, now=NOW))
    assert await store.request_stop("t", NOW) is not None
    assert await redis_client.sismember(keys.instance_tasks("inst-a"), "t")
    assert await redis_client.ttl(keys.task("t")) == -1
    await store.save(batch([finish(r, TaskStatus.CANCELLED)], now=NOW + 1))
    assert not await redis_client.sismember(keys.instance_tasks("inst-a"), "t")
    assert await store.pending_stops("inst-a") == []
    assert await redis_client.zscore(keys.status_index("running"), "t") is None
    assert await redis_client.zscore(keys.status_index("cancelled"), "t") == NOW
    assert 3590 < await redis_client.ttl(keys.task("t")) <= 3600
    assert 3590 < await redis_client.ttl(keys.output("t")) <= 3600
    assert await redis_client.zscore(keys.finished, "t cancelled u i") == NOW + 1


# -- retention ---------------------------------------------------------------------------


async def index_keys(redis_client: redis.asyncio.Redis, keys: Keys) -> set[str]:
    """The prefix's index and retention keys that exist."""
    found = {k.decode() async for k in redis_client.scan_iter(match=keys.pattern)}
    return {k for k in found if k.startswith(keys.base + "idx:") or k == keys.finished}


async def finished_then_expired(store: RedisStore, ttl: float) -> None:
    """Records of two users, items and statuses, finished now, then `ttl` and a margin
    waited: past their retention."""
    now = time.time()
    records = [
        finish(rec(f"t{i}", user_id=f"u{i % 2}", item_id=f"i{i % 3}", created_at=now), at=now)
        for i in range(6)
    ]
    finish(records[0], TaskStatus.FAILED, at=now)
    await store.save(batch(records, outputs={"t1": [OutputChunk(1, "x", now)]}, now=now))
    await asyncio.sleep(ttl * 1.5 + 0.1)


async def test_expired_ids_leave_every_index_on_an_idle_instances_heartbeat(
    make_store: Callable[..., Awaitable[RedisStore]],
    redis_client: redis.asyncio.Redis,
    keys: Keys,
) -> None:
    """An idle application writes nothing but its heartbeats: they trim, and the index
    keys go with their last member."""
    store = await make_store(result_ttl=0.2)
    await store.heartbeat("idle", 10)
    await finished_then_expired(store, 0.2)
    assert await index_keys(redis_client, keys) == {
        keys.all,
        keys.finished,
        keys.user_index("u0"),
        keys.user_index("u1"),
        keys.item_index("i0"),
        keys.item_index("i1"),
        keys.item_index("i2"),
        keys.status_index("completed"),
        keys.status_index("failed"),
    }
    assert await store.heartbeat("idle", 10)
    assert await index_keys(redis_client, keys) == set()
    assert await redis_client.exists(keys.task("t0"), keys.output("t1")) == 0


async def test_expired_ids_leave_every_index_on_a_read(
    make_store: Callable[..., Awaitable[RedisStore]],
    redis_client: redis.asyncio.Redis,
    keys: Keys,
) -> None:
    store = await make_store(result_ttl=0.2)
    await finished_then_expired(store, 0.2)
    assert (await store.query(item_id="i1")).records == []
    assert await index_keys(redis_client, keys) == set()
    await finished_then_expired(store, 0.2)
    assert (await store.counts())[TaskStatus.COMPLETED] == 0
    assert await index_keys(redis_client, keys) == set()


async def test_a_running_task_keeps_its_index_entries_while_expired_ones_go(
    make_store: Callable[..., Awaitable[RedisStore]],
    redis_client: redis.asyncio.Redis,
    keys: Keys,
) -> None:
    store = await make_store(result_ttl=0.2)
    await store.save(batch([rec("long", user_id="u0", item_id="i0")], now=time.time()))
    await finished_then_expired(store, 0.2)
    await store.heartbeat("inst-a", 10)
    assert await index_keys(redis_client, keys) == {
        keys.all,
        keys.user_index("u0"),
        keys.item_index("i0"),
        keys.status_index("running"),
    }
    for index in await index_keys(redis_client, keys):
        assert await redis_client.zrange(index, 0, -1) == [b"long"], index
        assert await redis_client.ttl(index) == -1, index  # never expires under a running task


async def test_max_finished_keeps_the_store_bounded(
    make_store: Callable[..., Awaitable[RedisStore]],
    redis_client: redis.asyncio.Redis,
    keys: Keys,
) -> None:
    store = await make_store(max_finished=3)
    for round_ in range(4):
        records = [
            finish(rec(f"t{round_}-{i}", user_id="u", item_id=f"i{i}"), at=NOW + round_ * 10 + i)
            for i in range(5)
        ]
        outputs = {r.task_id: [OutputChunk(1, "x", NOW)] for r in records}
        await store.save(batch([*records, rec(f"run{round_}")], outputs=outputs, now=NOW))
    newest = {"t3-2", "t3-3", "t3-4"}
    members = await redis_client.zrange(keys.finished, 0, -1)
    assert {text(m).split()[0] for m in members if isinstance(m, bytes)} == newest
    assert await redis_client.zcard(keys.user_index("u")) == 3
    assert await redis_client.zcard(keys.status_index("completed")) == 3
    assert await redis_client.zcard(keys.all) == 3 + 4  # plus the running ones
    assert await store.get("t0-0") is None
    assert await redis_client.exists(keys.output("t0-0")) == 0
    assert await redis_client.exists(keys.output("t3-4")) == 1
    page = await store.query(status=TaskStatus.COMPLETED)
    assert {r.task_id for r in page.records} == newest
    # the run of writes left nothing else behind
    found = {k.decode() async for k in redis_client.scan_iter(match=keys.pattern)}
    assert {k for k in found if k.startswith(keys.task_prefix)} == {
        keys.task(t) for t in [*newest, "run0", "run1", "run2", "run3"]
    }


async def test_trimming_spares_a_reused_id(
    make_store: Callable[..., Awaitable[RedisStore]], redis_client: redis.asyncio.Redis, keys: Keys
) -> None:
    store = await make_store(max_finished=1)
    await store.save(batch([finish(rec("t", user_id="u"))], now=NOW + 1))
    await redis_client.delete(keys.task("t"))  # as if it expired
    await store.save(batch([rec("t", user_id="u")], now=NOW + 2))  # the id comes back
    await store.save(batch([finish(rec("other"), at=NOW + 3)], now=NOW + 3))  # trims "t ..."
    got = await store.get("t")
    assert got is not None and got.status is TaskStatus.RUNNING
    assert [r.task_id for r in (await store.query(user_id="u")).records] == ["t"]


# -- query -----------------------------------------------------------------------------


async def test_query_pages_through_equal_creation_times(store: RedisStore) -> None:
    records = [rec(f"t{i:02d}") for i in range(23)]  # all created at NOW
    await store.save(batch(records, now=NOW))
    seen: list[str] = []
    page = await store.query(limit=5)
    seen += [r.task_id for r in page.records]
    while page.cursor is not None:
        page = await store.query(limit=5, cursor=page.cursor)
        seen += [r.task_id for r in page.records]
    assert sorted(seen) == sorted(r.task_id for r in records)
    assert len(seen) == len(set(seen))


async def test_query_scans_past_its_budget(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import taskward.stores.redis as redis_store

    monkeypatch.setattr(redis_store, "QUERY_BUDGET", 3)
    records = [
        rec(f"t{i:02d}", created_at=NOW + i, user_id="u", item_id=f"i{i % 4}") for i in range(20)
    ]
    await store.save(batch(records, now=NOW))
    page = await store.query(user_id="u", item_id="i1", limit=3)
    assert [r.task_id for r in page.records] == ["t17", "t13", "t09"]
    page = await store.query(user_id="u", item_id="i1", limit=3, cursor=page.cursor)
    assert [r.task_id for r in page.records] == ["t05", "t01"]
    assert page.cursor is None


async def test_query_never_shows_a_stale_index_entry(
    store: RedisStore, redis_client: redis.asyncio.Redis, keys: Keys
) -> None:
    await store.save(batch([rec("theirs", user_id="u2")], now=NOW))
    await redis_client.zadd(keys.user_index("u1"), {"theirs": NOW})  # e.g. an id reused by u2
    assert (await store.query(user_id="u1")).records == []
    assert await redis_client.zcard(keys.user_index("u1")) == 0


# -- output ------------------------------------------------------------------------------


async def test_output_of_an_unknown_task_is_dropped(
    store: RedisStore, redis_client: redis.asyncio.Redis, keys: Keys
) -> None:
    await store.save(batch(outputs={"ghost": [OutputChunk(1, "boo", NOW)]}, now=NOW))
    assert await redis_client.exists(keys.output("ghost")) == 0


async def test_output_after_finishing_expires_with_the_record(
    store: RedisStore, redis_client: redis.asyncio.Redis, keys: Keys
) -> None:
    await store.save(batch([finish(rec("t"))], now=NOW + 1))
    await store.save(batch(outputs={"t": [OutputChunk(1, "late", NOW)]}, now=NOW + 1))
    assert 0 < await redis_client.pttl(keys.output("t")) <= 3_600_000


async def test_huge_output_batch_fits_lua_limits(store: RedisStore) -> None:
    await store.save(batch([rec("t")], now=NOW))
    chunks = [OutputChunk(i, "x", NOW) for i in range(1, 2501)]
    await store.save(batch(outputs={"t": chunks}, now=NOW))
    got = await store.read_output("t", limit=5000)
    assert [c.seq for c in got] == list(range(1501, 2501))  # the default cap is 1000


# -- stops -------------------------------------------------------------------------------


# -- liveness ----------------------------------------------------------------------------


async def test_heartbeat_marks_alive_and_reasserts_running_records(
    store: RedisStore, redis_client: redis.asyncio.Redis, keys: Keys
) -> None:
    await store.heartbeat("inst-a", 2.0)
    assert 1000 < await redis_client.pttl(keys.alive("inst-a")) <= 2000
    assert await redis_client.smembers(keys.instances) == {b"inst-a"}
    gone, lost, fine = rec("gone"), finish(rec("lost"), TaskStatus.LOST), rec("fine")
    await store.save(batch([lost, fine], now=NOW + 1))
    lost_again = rec("lost", progress=0.7)  # the owner still thinks it runs
    await redis_client.srem(keys.instance_tasks("inst-a"), "fine")
    await store.heartbeat("inst-a", 2.0, lives([gone, lost_again, fine, finish(rec("ended"))]))
    assert await store.get("gone") == gone
    still = await store.get("lost")
    assert still is not None and still.status is TaskStatus.LOST
    assert await redis_client.smembers(keys.instance_tasks("inst-a")) == {b"gone", b"fine"}
    assert await store.get("ended") is None


async def test_reap_marks_the_tasks_of_a_dead_instance_lost(
    store: RedisStore, redis_client: redis.asyncio.Redis, keys: Keys
) -> None:
    await store.heartbeat("dead", 0.05)
    await store.heartbeat("live", 30)
    dead = [rec(f"d{i}", instance_id="dead", user_id="u") for i in range(3)]
    live = [rec(f"l{i}", instance_id="live") for i in range(2)]
    await store.save(batch([*dead, *live], now=NOW))
    await store.request_stop("d0", NOW)
    await asyncio.sleep(0.1)
    now = time.time()
    lost = await store.reap(now)
    assert sorted(r.task_id for r in lost) == ["d0", "d1", "d2"]
    for r in lost:
        assert r.status is TaskStatus.LOST
        assert r.finished_at == now and r.updated_at == now
        assert r.error == TaskError(
            "TaskLost", f"task '{r.task_id}' was lost with its instance 'dead'"
        )
        assert await store.get(r.task_id) == r
    for r in live:
        got = await store.get(r.task_id)
        assert got is not None and got.status is TaskStatus.RUNNING
    assert await redis_client.smembers(keys.instances) == {b"live"}
    assert await redis_client.exists(keys.instance_tasks("dead"), keys.instance_stops("dead")) == 0
    page = await store.query(user_id="u", status=TaskStatus.LOST)
    assert len(page.records) == 3
    assert await store.reap(time.time()) == []
    assert await redis_client.exists(keys.reaper_lock) == 0


async def test_reap_skips_tasks_that_already_finished(store: RedisStore) -> None:
    await store.heartbeat("dead", 0.05)
    await store.save(batch([rec("a", instance_id="dead"), rec("b", instance_id="dead")], now=NOW))
    # "a" finished but its set entry survived (say, the write raced the reaper's read)
    await store.save(batch([finish(rec("a", instance_id="dead"))], now=NOW + 1))
    await asyncio.sleep(0.1)
    lost = await store.reap(time.time())
    assert [r.task_id for r in lost] == ["b"]
    got = await store.get("a")
    assert got is not None and got.status is TaskStatus.COMPLETED


async def test_reaper_lock_keeps_a_second_reaper_out(
    store: RedisStore, redis_client: redis.asyncio.Redis, keys: Keys
) -> None:
    await store.heartbeat("dead", 0.05)
    await store.save(batch([rec(f"d{i}", instance_id="dead") for i in range(7)], now=NOW))
    await asyncio.sleep(0.1)
    await redis_client.set(keys.reaper_lock, "someone-else", px=5000)
    assert await store.reap(time.time()) == []
    got = await store.get("d0")
    assert got is not None and got.status is TaskStatus.RUNNING
    await redis_client.delete(keys.reaper_lock)
    # two reapers at once, each working in small steps: every task is reaped exactly once
    other = RedisStore(redis_client, keys=keys)
    store.reap_budget = other.reap_budget = 2
    first, second = await asyncio.gather(store.reap(time.time()), other.reap(time.time()))
    ids = [r.task_id for r in first + second]
    assert sorted(ids) == [f"d{i}" for i in range(7)]
    assert not first or not second


async def test_retire_forgets_an_idle_instance_only(
    store: RedisStore, redis_client: redis.asyncio.Redis, keys: Keys
) -> None:
    await store.heartbeat("idle", 30)
    await store.heartbeat("busy", 30)
    await store.save(batch([rec("t", instance_id="busy")], now=NOW))
    await store.retire("idle")
    await store.retire("busy")
    assert await redis_client.exists(keys.alive("idle"), keys.alive("busy")) == 0
    # a retiring instance that left running tasks stays known, so the reaper marks them lost
    assert await redis_client.smembers(keys.instances) == {b"busy"}
    assert [r.task_id for r in await store.reap(time.time())] == ["t"]


# -- cost and failure -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 400, 1200])
async def test_save_is_one_round_trip(redis_url: str, keys: Keys, n: int) -> None:
    conn = connect(redis_url, connection_class=CountingConnection)
    try:
        store = RedisStore(conn.client, keys=keys)
        await store.start()
        records = [rec(f"t{i}", user_id=f"u{i % 7}") for i in range(n)]
        outputs = {f"t{i}": [OutputChunk(1, "x", NOW)] for i in range(0, n, 3)}
        before = CountingConnection.round_trips
        await store.save(batch(records, outputs=outputs, now=NOW))
        assert CountingConnection.round_trips - before == 1
        for r in records:
            finish(r)
        before = CountingConnection.round_trips
        await store.save(batch(records, now=NOW + 1))
        await store.heartbeat("inst-a", 5, lives(records[:10]))
        assert CountingConnection.round_trips - before == 2
        page = await store.query(user_id="u3", status=TaskStatus.COMPLETED, limit=50)
        assert len(page.records) == min(50, len(range(3, n, 7)))
    finally:
        await conn.aclose()


@pytest.mark.parametrize("n", [1, 600])
async def test_a_notice_is_published_once_after_the_whole_batch(
    redis_client: redis.asyncio.Redis, store: RedisStore, keys: Keys, n: int
) -> None:
    """The save script publishes the notice itself, with the last chunk of the batch:
    whoever it wakes finds every record of the batch written."""
    found: list[int] = []  # per message: how many of the batch's records were written
    heard = asyncio.Event()

    async def listen(ready: asyncio.Event) -> None:
        async with redis_client.pubsub() as pubsub:
            await pubsub.subscribe(keys.events)
            ready.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    written = await store.get_many([f"t{i}" for i in range(n)])
                    found.append(sum(r is not None for r in written))
                    heard.set()

    ready = asyncio.Event()
    listener = asyncio.create_task(listen(ready))
    try:
        await ready.wait()
        records = [rec(f"t{i}") for i in range(n)]
        await store.save(batch(records, now=NOW, notice="the events"))
        await store.save(batch([rec("other")], now=NOW))  # no notice: nothing published
        await asyncio.wait_for(heard.wait(), 10)
        await asyncio.sleep(0.1)  # room for a second message, which must not come
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    assert found == [n]


async def test_store_unavailable_when_the_server_is_down(private_redis: ServerProcess) -> None:
    conn = connect(private_redis.url)
    try:
        store = RedisStore(conn.client, keys=Keys(), retry_budget=0.3)
        await store.start()
        await store.save(batch([rec("t")], now=NOW))
        private_redis.stop()
        with pytest.raises(StoreUnavailable) as info:
            await store.get("t")
        assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
        with pytest.raises(StoreUnavailable):
            await store.save(batch([rec("u")], now=NOW))
        with pytest.raises(StoreUnavailable):
            await store.query()
        private_redis.restart()
        await store.save(batch([rec("u")], now=NOW))  # scripts are reloaded (NOSCRIPT)
        assert await store.get("u") is not None
    finally:
        await conn.aclose()


async def test_a_write_rides_out_a_short_outage(private_redis: ServerProcess) -> None:
    conn = connect(private_redis.url)
    try:
        store = RedisStore(conn.client, keys=Keys(), retry_budget=10)
        await store.start()
        private_redis.stop()
        loop = asyncio.get_running_loop()
        restart = loop.call_later(0.5, private_redis.restart)
        await store.save(batch([rec("t") for _ in range(1)], now=NOW))
        restart.cancel()
        assert await store.get("t") is not None
    finally:
        await conn.aclose()


def test_retry_budget_must_be_positive(redis_client: redis.asyncio.Redis) -> None:
    with pytest.raises(ValueError, match="retry_budget"):
        RedisStore(redis_client, retry_budget=0)
