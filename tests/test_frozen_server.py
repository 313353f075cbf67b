"""A server that stops answering: frozen (SIGSTOP), or an address that accepts and stays silent.

Such a server is worse than a dead one: connections open, commands are sent,
and no reply ever comes. Every client taskward builds has a socket timeout and a
connect timeout (`taskward._redis.connect`), and a timeout is not retried, so:
reads raise `StoreUnavailable` within about one socket timeout, stops answer
`pending` within their stop timeout, waits end at their own timeout, creating a
task does not wait for a store known to be down, and once the server answers
again everything done meanwhile is written and nothing is lost.

The instances here run on clients built with short timeouts (`SOCKET_TIMEOUT`),
so that each silence costs a test one second, not the default five; the
defaults themselves are checked on the clients, without I/O.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING, Any, Self

import pytest
import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster

from distributed_helpers import eventually, timed
from helpers import batch, forever
from servers import HOST, ClusterProcesses, ServerProcess, ping
from taskward import (
    StopOutcome,
    StoreUnavailable,
    TaskManager,
    TaskRecord,
    TaskStatus,
    TaskTimeout,
    emit,
)
from taskward._pulse import sync_client_factory
from taskward._redis import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SOCKET_TIMEOUT,
    UNAVAILABLE_ERRORS,
    RedisConnection,
    call_with_retry,
    connect,
)
from taskward.bus.redis import RedisBus
from taskward.stores.keys import Keys
from taskward.stores.redis import RedisStore
from test_redis_bus import Recorder

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

pytestmark = pytest.mark.redis

#: The timeouts of the clients the instances here run on (s).
SOCKET_TIMEOUT = 1.0
CONNECT_TIMEOUT = 1.0
STOP_TIMEOUT = 1.5
#: Slack on top of a documented bound (s): scheduling, a loaded machine.
MARGIN = 2.0
#: Longest the store may take to catch up once the server answers again (s).
CATCH_UP = 15.0

# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
async def make_instance(private_redis: ServerProcess) -> AsyncIterator[Callable[..., Any]]:
    """``await make_instance(instance_id, **options)``: a started manager on `private_redis`.

    Each opens its own connections with `SOCKET_TIMEOUT` and `CONNECT_TIMEOUT`.
    After the test the server is thawed, then the managers are closed.
    """
    made: list[TaskManager] = []
    prefix = "twfrozen"

    async def make(instance_id: str, **options: Any) -> TaskManager:
        settings: dict[str, Any] = {
            "stop_timeout": STOP_TIMEOUT,
            "shutdown_grace": 0.0,
            "shutdown_timeout": 1.0,
            "socket_timeout": SOCKET_TIMEOUT,
            "connect_timeout": CONNECT_TIMEOUT,
            **options,
        }
        tm = TaskManager(
            redis=private_redis.url, prefix=prefix, instance_id=instance_id, **settings
        )
        made.append(tm)
        await tm.start()
        return tm

    yield make
    private_redis.thaw()
    for tm in reversed(made):
        await tm.aclose()


async def unavailable_within(awaitable: Awaitable[Any], bound: float, what: str) -> None:
    """Await `awaitable`, which must raise `StoreUnavailable` within `bound` seconds."""
    start = time.monotonic()
    with pytest.raises(StoreUnavailable):
        async with asyncio.timeout(bound + 30):  # a hang fails the test, it does not stall it
            await awaitable
    took = time.monotonic() - start
    assert took < bound, f"{what} raised StoreUnavailable only after {took:.2f}s (bound {bound}s)"


async def talkative(lines: int) -> None:
    """Emits `lines` lines of output, then runs until cancelled."""
    for i in range(lines):
        emit(f"line {i}")
    await asyncio.Event().wait()


async def status_of(tm: TaskManager, task_id: str) -> TaskStatus | None:
    """The task's status as `tm` reads it; None while the store does not answer."""
    try:
        rec = await tm.get_record(task_id)
    except StoreUnavailable:
        return None
    return None if rec is None else rec.status


async def statuses(tm: TaskManager, task_ids: list[str]) -> list[TaskStatus | None]:
    return [await status_of(tm, t) for t in task_ids]


class BlackHole:
    """A TCP server on a loopback port that accepts connections and never answers."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0
        self.accepted = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._swallow, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        try:
            while await reader.read(1 << 16):
                pass  # read what is sent, answer nothing
        except OSError:
            pass


# -- the test server's freeze ------------------------------------------------------------------


def test_a_frozen_server_keeps_its_port_answers_nothing_and_closes(
    private_redis: ServerProcess,
) -> None:
    private_redis.freeze()
    assert private_redis.is_frozen and "frozen" in repr(private_redis)
    assert not ping(*private_redis.address, timeout=0.3)
    private_redis.thaw()
    assert not private_redis.is_frozen
    assert ping(*private_redis.address, timeout=2.0)
    with private_redis.frozen():
        assert not ping(*private_redis.address, timeout=0.3)
    assert ping(*private_redis.address, timeout=2.0)
    private_redis.freeze()
    start = time.monotonic()
    private_redis.close()  # SIGTERM reaches a stopped process only once it runs again
    assert not private_redis.is_running
    assert time.monotonic() - start < 4.0, "closing a frozen server waited for its SIGKILL"


# -- the timeouts every client gets --------------------------------------------------------------


def _pool_timeouts(client: redis.asyncio.Redis) -> tuple[Any, Any]:
    kwargs = client.connection_pool.connection_kwargs
    return kwargs["socket_timeout"], kwargs["socket_connect_timeout"]


async def test_clients_built_from_a_url_get_the_default_timeouts() -> None:
    conn = connect("redis://127.0.0.1:1/0")
    assert (conn.socket_timeout, conn.connect_timeout) == (
        DEFAULT_SOCKET_TIMEOUT,
        DEFAULT_CONNECT_TIMEOUT,
    )
    assert isinstance(conn.client, redis.asyncio.Redis)
    assert _pool_timeouts(conn.client) == (DEFAULT_SOCKET_TIMEOUT, DEFAULT_CONNECT_TIMEOUT)
    await conn.aclose()


async def test_the_timeouts_reach_standalone_cluster_and_sentinel_clients() -> None:
    conn = connect("redis://127.0.0.1:1/0", socket_timeout=1.25, connect_timeout=0.75)
    assert isinstance(conn.client, redis.asyncio.Redis)
    assert _pool_timeouts(conn.client) == (1.25, 0.75)
    await conn.aclose()

    conn = connect(
        "redis+cluster://127.0.0.1:1,127.0.0.1:2", socket_timeout=1.25, connect_timeout=0.75
    )
    assert conn.is_cluster
    kwargs = conn.client.get_connection_kwargs()
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.25, 0.75)
    await conn.aclose()

    conn = connect(
        "redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster?sentinel_password=s",
        socket_timeout=1.25,
        connect_timeout=0.75,
    )
    assert isinstance(conn.client, redis.asyncio.Redis)
    assert _pool_timeouts(conn.client) == (1.25, 0.75)  # the master's
    sentinel = conn._sentinel
    assert sentinel is not None
    for each in sentinel.sentinels:  # and the sentinels' own
        assert _pool_timeouts(each) == (1.25, 0.75)
    await conn.aclose()


def test_timeouts_given_in_a_url_are_the_ones_reported() -> None:
    conn = connect("redis://127.0.0.1:1/0?socket_timeout=3&socket_connect_timeout=4")
    assert (conn.socket_timeout, conn.connect_timeout) == (3.0, 4.0)
    assert isinstance(conn.client, redis.asyncio.Redis)
    assert _pool_timeouts(conn.client) == (3.0, 4.0)


def test_timeout_arguments_are_checked(redis_client: redis.asyncio.Redis) -> None:
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="socket_timeout"):
            connect("redis://127.0.0.1:1/0", socket_timeout=bad)
        with pytest.raises(ValueError, match="connect_timeout"):
            connect("redis://127.0.0.1:1/0", connect_timeout=bad)
    with pytest.raises(TypeError, match="connect_timeout"):
        connect("redis://127.0.0.1:1/0", connect_timeout="2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="connect_timeout="):
        connect("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    # A caller's client is used as it is: no timeout is set on it.
    with pytest.raises(TypeError, match="timeouts"):
        connect(redis_client, socket_timeout=1)
    with pytest.raises(TypeError, match="timeouts"):
        connect(redis_client, connect_timeout=1)
    conn = connect(redis_client)
    assert (conn.socket_timeout, conn.connect_timeout) == (None, None)


def _pulse_client_timeouts(conn: RedisConnection, interval: float) -> tuple[Any, Any]:
    factory = sync_client_factory(conn, interval)
    assert factory is not None
    client, close = factory()
    try:
        kwargs = client.connection_pool.connection_kwargs
        return kwargs["socket_timeout"], kwargs["socket_connect_timeout"]
    finally:
        close()


async def test_the_liveness_thread_gets_the_timeouts_capped_at_its_interval(
    redis_client: redis.asyncio.Redis,
) -> None:
    conn = connect("redis://127.0.0.1:1/0", socket_timeout=3.0, connect_timeout=0.5)
    # A beat not answered by the next one is abandoned: never longer than the interval.
    assert _pulse_client_timeouts(conn, 1.0) == (1.0, 0.5)
    assert _pulse_client_timeouts(conn, 10.0) == (3.0, 0.5)
    await conn.aclose()
    sentinel = connect("redis+sentinel://127.0.0.1:1/m", socket_timeout=0.25, connect_timeout=0.5)
    assert _pulse_client_timeouts(sentinel, 1.0) == (0.25, 0.5)
    await sentinel.aclose()
    # A caller's client has its own timeouts; the thread's mirror of it waits one interval.
    assert _pulse_client_timeouts(connect(redis_client), 0.75) == (0.75, 0.75)


# -- timeouts are final: mapped to StoreUnavailable, never retried --------------------------------


@pytest.mark.parametrize(
    "error",
    [redis.exceptions.TimeoutError("Timeout reading from h:1"), TimeoutError()],
    ids=["redis-timeout", "asyncio-timeout"],
)
async def test_a_timeout_is_not_retried_and_means_unavailable(error: Exception) -> None:
    calls = 0

    async def silent() -> None:
        nonlocal calls
        calls += 1
        raise error

    start = time.monotonic()
    with pytest.raises(type(error)):
        await call_with_retry(silent, budget=5)
    assert calls == 1
    assert time.monotonic() - start < 1.0  # no backoff either
    assert isinstance(error, UNAVAILABLE_ERRORS)  # what the store and bus answer as unavailable


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
async def test_a_server_that_accepts_and_never_answers_is_unavailable_within_the_timeout(
    scheme: str,
) -> None:
    async with BlackHole() as hole:
        url = f"{scheme}://{HOST}:{hole.port}"
        conn = connect(url, socket_timeout=SOCKET_TIMEOUT, connect_timeout=CONNECT_TIMEOUT)
        try:
            store = RedisStore(conn.client)  # the default retry budget (10 s)
            # One timeout, not one per retry (redis-py's own, or the store's).
            await unavailable_within(store.start(), 2 * SOCKET_TIMEOUT, f"{scheme} start")
            assert hole.accepted >= 1
            await unavailable_within(
                store.get("t"), 2 * SOCKET_TIMEOUT, f"a {scheme} read from a silent server"
            )
            tm = TaskManager(redis=conn.client, instance_id="hole", shutdown_timeout=0.5)
            await unavailable_within(tm.start(), 2 * SOCKET_TIMEOUT, "TaskManager.start")
            await tm.aclose()
        finally:
            await conn.aclose()


@pytest.mark.cluster
@pytest.mark.slow
async def test_a_frozen_cluster_node_costs_one_timeout_and_is_used_again_after() -> None:
    with ClusterProcesses() as cluster:  # private: one of its nodes is frozen
        conn = connect(cluster.url, socket_timeout=SOCKET_TIMEOUT, connect_timeout=CONNECT_TIMEOUT)
        try:
            store = RedisStore(conn.client, keys=Keys("twfrozen"))
            await store.start()
            await store.save(batch([TaskRecord("t1", user_id="u")], now=time.time()))
            client = conn.client
            assert isinstance(client, RedisCluster)
            owner = client.get_node_from_key(store.keys.all)
            assert owner is not None
            node = next(n for n in cluster.nodes if n.port == owner.port)
            with node.frozen():
                # Not one timeout per retry of redis-py's cluster client (three, and
                # fixed waits for a pipeline): one, or two when the slot map refresh
                # that follows a failure asks the silent node first.
                bound = 2 * SOCKET_TIMEOUT + 0.8
                await unavailable_within(store.get("t1"), bound, "a read from a frozen node")
                await unavailable_within(
                    store.get_many(["t1", "t2"]), bound, "a pipeline to a frozen node"
                )
            rec = await store.get("t1")
            assert rec is not None and rec.user_id == "u"
        finally:
            await conn.aclose()


async def test_an_idle_bus_outlives_the_socket_timeout(redis_url: str, key_prefix: str) -> None:
    """The bus's listener blocks on reads by design: the command timeout must not end it."""
    keys = Keys(key_prefix)
    idle_conn = connect(redis_url, socket_timeout=0.3)
    sender_conn = connect(redis_url, socket_timeout=0.3)
    listener, sender = RedisBus(idle_conn, keys=keys), RedisBus(sender_conn, keys=keys)
    handlers = Recorder()
    try:
        await listener.start("idle", handlers)
        await sender.start("sender", Recorder())
        await asyncio.sleep(1.5)  # five socket timeouts without a message
        await sender.send_command("idle", {"op": "stop", "task_id": "t1"})
        await handlers.until(lambda: bool(handlers.commands), timeout=5.0)
        assert handlers.commands == [{"op": "stop", "task_id": "t1"}]
        assert handlers.reconnects == 0, "the idle subscriber's connection was dropped"
    finally:
        await sender.aclose()
        await listener.aclose()
        await sender_conn.aclose()
        await idle_conn.aclose()


# -- two instances on a frozen server --------------------------------------------------------------


@pytest.mark.slow
async def test_reads_raise_store_unavailable_within_the_socket_timeout(
    private_redis: ServerProcess, make_instance: Callable[..., Awaitable[TaskManager]]
) -> None:
    a, b = await make_instance("a"), await make_instance("b")
    talker = await a.create_task(talkative(3), "chat", user_id="u")
    assert [c.data for c in await b.read_output(talker)] == ["line 0", "line 1", "line 2"]
    bound = SOCKET_TIMEOUT + MARGIN
    with private_redis.frozen():
        await unavailable_within(b.get_record(talker), bound, "get_record")
        await unavailable_within(b.records(user_id="u"), bound, "records")
        await unavailable_within(b.read_output(talker), bound, "read_output")
        await unavailable_within(b.list_task_ids_by_item_id("chat"), bound, "listing an item")
        # The owner answers for its own running task without the store.
        rec, took = await timed(a.get_record(talker))
        assert rec is not None and rec.status is TaskStatus.RUNNING
        assert took < 0.5
    # Answered again once the server is.
    await eventually(
        lambda: status_of(b, talker), timeout=CATCH_UP, accept=TaskStatus.RUNNING.__eq__
    )


@pytest.mark.slow
async def test_after_a_freeze_everything_done_meanwhile_is_written_and_nothing_is_lost(
    private_redis: ServerProcess, make_instance: Callable[..., Awaitable[TaskManager]]
) -> None:
    """Frozen longer than the liveness TTL: every liveness key expires in the server's time."""
    a, b = await make_instance("a"), await make_instance("b")
    ttl = a.liveness_ttl
    keep = [await a.create_task(forever(), user_id="u") for _ in range(3)]
    ending = [await a.create_task(asyncio.sleep(0.5, f"r{i}"), user_id="u") for i in range(2)]
    to_stop = await a.create_task(forever(), user_id="u")
    theirs = await b.create_task(forever(), user_id="u")
    with private_redis.frozen():
        frozen_at = time.monotonic()
        # A stop of a task here is confirmed here, with the store silent.
        result, took = await timed(a.stop_task(to_stop))
        assert result.outcome is StopOutcome.CANCELLED, result
        assert took < STOP_TIMEOUT + MARGIN, f"a local stop took {took:.2f}s while frozen"
        made = [await a.create_task(asyncio.sleep(0, f"m{i}"), user_id="u") for i in range(5)]
        made_b = await b.create_task(asyncio.sleep(0, "mb"), user_id="u")
        await asyncio.sleep(max(0.0, ttl + 1.0 - (time.monotonic() - frozen_at)))
        assert a.running_count == len(keep) and b.running_count == 1

    everything = [*keep, *ending, to_stop, *made, theirs, made_b]
    expected = [
        *[TaskStatus.RUNNING] * len(keep),
        *[TaskStatus.COMPLETED] * len(ending),
        TaskStatus.CANCELLED,
        *[TaskStatus.COMPLETED] * len(made),
        TaskStatus.RUNNING,
        TaskStatus.COMPLETED,
    ]
    # Each instance reads the other's tasks from the store: all written, none lost.
    for reader in (b, a):
        await eventually(
            functools.partial(statuses, reader, everything),
            timeout=CATCH_UP,
            what="every outcome written",
            accept=expected.__eq__,
        )
    results = [await b.result(t) for t in [*ending, *made]]
    assert results == ["r0", "r1", *(f"m{i}" for i in range(5))]
    assert await a.result(made_b) == "mb"
    page = await b.records(user_id="u", status="running", limit=100)
    assert sorted(r.task_id for r in page.records) == sorted([*keep, theirs])

    # Nobody is reaped afterwards: two liveness TTLs of watching.
    watch_until = time.monotonic() + 2 * ttl
    while time.monotonic() < watch_until:
        assert await statuses(b, [*keep, theirs]) == [TaskStatus.RUNNING] * 4
        await asyncio.sleep(0.2)
    assert a.running_count == len(keep) and b.running_count == 1
    # Stops work across instances again.
    result = await b.stop_task(keep[0])
    assert result.outcome is StopOutcome.CANCELLED, result


# -- how the manager answers while the store is silent ------------------------------------------


@pytest.mark.slow
async def test_a_stop_of_a_task_on_the_other_instance_answers_pending(
    private_redis: ServerProcess, make_instance: Callable[..., Awaitable[TaskManager]]
) -> None:
    a, b = await make_instance("a"), await make_instance("b")
    task_id = await a.create_task(forever(), user_id="u")
    with private_redis.frozen():
        result, took = await timed(b.stop_task(task_id, user_id="u"))
        assert result.outcome is StopOutcome.PENDING, result
        assert took < STOP_TIMEOUT + MARGIN, f"the stop answered after {took:.2f}s"
        assert a.running_count == 1
    # The request stays and is honoured once the server answers again.
    await eventually(
        lambda: status_of(b, task_id),
        timeout=CATCH_UP,
        what="the pending stop honoured",
        accept=TaskStatus.CANCELLED.__eq__,
    )
    assert a.running_count == 0


@pytest.mark.slow
async def test_stop_item_tasks_answers_while_the_server_is_frozen(
    private_redis: ServerProcess, make_instance: Callable[..., Awaitable[TaskManager]]
) -> None:
    a, b = await make_instance("a"), await make_instance("b")
    here = [await a.create_task(forever(), "chat-1", user_id="u") for _ in range(2)]
    there = await b.create_task(forever(), "chat-2", user_id="u")
    bound = 2 * STOP_TIMEOUT + MARGIN
    with private_redis.frozen():
        # On the owner: its own tasks of the item are stopped and confirmed.
        results, took = await timed(a.stop_item_tasks("chat-1", user_id="u"))
        assert took < bound, f"stop_item_tasks answered after {took:.2f}s"
        assert sorted(r.task_id for r in results) == sorted(here)
        assert {r.outcome for r in results} == {StopOutcome.CANCELLED}
        # For an item whose tasks run elsewhere: an answer in time; the stop is honoured later.
        _, took = await timed(a.stop_item_tasks("chat-2", user_id="u"))
        assert took < bound, f"a remote stop_item_tasks answered after {took:.2f}s"
    await eventually(
        lambda: status_of(a, there),
        timeout=CATCH_UP,
        what="the item's stop honoured on the other instance",
        accept=TaskStatus.CANCELLED.__eq__,
    )


@pytest.mark.slow
async def test_a_wait_with_a_timeout_keeps_its_timeout(
    private_redis: ServerProcess, make_instance: Callable[..., Awaitable[TaskManager]]
) -> None:
    a, b = await make_instance("a"), await make_instance("b")
    task_id = await a.create_task(forever(), user_id="u")
    timeout = 0.5
    with private_redis.frozen():
        for call in (b.wait, b.result):
            start = time.monotonic()
            with pytest.raises(TaskTimeout):
                await call(task_id, timeout=timeout)
            took = time.monotonic() - start
            assert took < timeout + 1.0, (
                f"{call.__name__} with a timeout of {timeout}s took {took:.2f}s"
            )


@pytest.mark.slow
async def test_a_wait_rides_out_a_freeze(
    private_redis: ServerProcess, make_instance: Callable[..., Awaitable[TaskManager]]
) -> None:
    a, b = await make_instance("a"), await make_instance("b")
    task_id = await a.create_task(asyncio.sleep(1.5, "done"), user_id="u")
    waiting = asyncio.create_task(b.wait(task_id, timeout=30.0))
    await asyncio.sleep(0.1)
    try:
        with private_redis.frozen():
            # Longer than a poll interval plus a socket timeout: some poll meets the silence.
            await asyncio.sleep(4.0)
            assert not waiting.done() or waiting.exception() is None, waiting
        rec = await asyncio.wait_for(waiting, CATCH_UP)
    finally:
        waiting.cancel()
    assert rec.status is TaskStatus.COMPLETED
    assert rec.result == "done"


@pytest.mark.slow
async def test_creating_tasks_does_not_wait_for_a_store_known_to_be_down(
    private_redis: ServerProcess, make_instance: Callable[..., Awaitable[TaskManager]]
) -> None:
    # A slow heartbeat, so that the only failure the manager sees is the read's.
    a = await make_instance("a", heartbeat_interval=5.0, liveness_ttl=15.0)
    b = await make_instance("b")
    theirs = await b.create_task(forever(), user_id="u")
    with private_redis.frozen():
        await unavailable_within(a.get_record(theirs), SOCKET_TIMEOUT + MARGIN, "get_record")
        start = time.monotonic()
        made = [await a.create_task(asyncio.sleep(0, i), user_id="u") for i in range(20)]
        took = time.monotonic() - start
        assert took < 0.5, f"20 creations took {took:.2f}s with the store known to be down"
        # They ran regardless.
        assert [await a.result(t) for t in made] == list(range(20))
    # And are written once the server answers again.
    written = [TaskStatus.COMPLETED] * len(made)
    await eventually(
        functools.partial(statuses, b, made),
        timeout=CATCH_UP,
        what="the tasks created meanwhile written",
        accept=written.__eq__,
    )
