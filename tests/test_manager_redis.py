"""TaskManager on Redis, in one process: round trips, events, and a stalled instance."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio

import taskward._reads
from helpers import blocked, forever, value
from taskward import StopOutcome, TaskFailed, TaskManager, TaskNotFound, TaskStatus
from taskward._redis import CountingConnection
from taskward.stores.keys import Keys

if TYPE_CHECKING:
    from collections.abc import Callable

    from servers import ServerProcess

pytestmark = pytest.mark.redis


@pytest.fixture
def manager_defaults(
    manager_defaults: dict[str, Any], redis_url: str, key_prefix: str
) -> dict[str, Any]:
    """Managers on the shared server, under the test's prefix."""
    return {**manager_defaults, "redis": redis_url, "prefix": key_prefix}


async def test_a_burst_of_lifecycles_costs_a_few_round_trips(
    redis_url: str, key_prefix: str
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, connection_class=CountingConnection)
    try:
        async with TaskManager(redis=client, prefix=key_prefix) as tm:
            await tm.wait(await tm.create_task(value(0)))  # warm up: connections, scripts
            before = CountingConnection.round_trips
            ids = await asyncio.gather(*(tm.create_task(value(i)) for i in range(400)))
            results = [(await tm.wait(task_id)).result for task_id in ids]
            used = CountingConnection.round_trips - before
    finally:
        await client.aclose()
    assert results == list(range(400))
    # One write for the whole burst (plus perhaps one for stragglers); the prior
    # web UI's registry needs two round trips per task, 800 here.
    assert used <= 4, used


async def test_the_events_of_a_flush_ride_on_its_write(
    redis_url: str,
    key_prefix: str,
    make_manager: Callable[..., TaskManager],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The watcher's safety re-read comes after 30 s, its wait times out after 5:
    # finishing in time proves the finished event (riding on the write) woke it.
    monkeypatch.setattr(taskward._reads, "WAIT_POLL", 30.0)
    client = redis.asyncio.Redis.from_url(redis_url, connection_class=CountingConnection)
    owner = make_manager(redis=client)
    watcher = make_manager()
    try:
        release = asyncio.Event()
        task_id = await owner.create_task(blocked(release))
        waiting = asyncio.create_task(watcher.wait(task_id, timeout=5))
        await asyncio.sleep(0.2)  # the watcher is now waiting for the finished event
        before = CountingConnection.round_trips
        release.set()
        rec = await waiting
        used = CountingConnection.round_trips - before
    finally:
        await owner.aclose()
        await client.aclose()
    assert rec.status is TaskStatus.COMPLETED
    assert rec.result == "released"
    assert used <= 2, used  # the save publishes the event in the same call (+ a heartbeat at most)


async def test_a_record_the_store_refuses_fails_its_task_and_says_so_on_the_bus(
    make_manager: Callable[..., TaskManager], caplog: pytest.LogCaptureFixture
) -> None:
    """The events would have ridden on the write; when it fails (not an outage),
    the refused record's task is recorded failed with the reason, and that
    `finished` event is published on its own instead of being dropped."""
    owner, watcher = make_manager(), make_manager()
    await watcher.start()
    release = asyncio.Event()
    task_id = await owner.create_task(blocked(release))
    await asyncio.sleep(0.2)  # the owner has heard of its peer
    async with watcher.events(task_id=task_id, kinds=["finished"]) as stream:

        async def broken(batch: Any) -> None:
            raise RuntimeError("a bug in the store")

        owner._store.save = broken  # type: ignore[method-assign]
        release.set()
        event = await asyncio.wait_for(anext(aiter(stream)), timeout=5)
    assert event.status is TaskStatus.FAILED
    assert event.record is not None and event.record.error is not None
    assert event.record.error.type == "StoreWriteError"
    assert "a bug in the store" in event.record.error.message
    assert "recording it as failed" in caplog.text
    assert "not even its failure could be written" in caplog.text


async def test_a_stalled_instance_cancels_the_tasks_others_marked_lost(
    redis_client: redis.asyncio.Redis,
    key_prefix: str,
    make_manager: Callable[..., TaskManager],
) -> None:
    timing = {"heartbeat_interval": 0.1, "liveness_ttl": 0.5}
    owner = make_manager(instance_id="stalls", **timing)
    reaper = make_manager(instance_id="reaps", **timing)
    await reaper.start()
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task_id = await owner.create_task(work())
    keys = Keys(key_prefix)
    # The owner "stalls" (a frozen process): its heartbeats stop, loop and thread
    # alike, and its liveness vanishes.
    assert owner._housekeeping is not None and owner._pulse is not None
    owner._housekeeping.cancel()
    await asyncio.to_thread(owner._pulse.stop)
    await redis_client.delete(keys.alive("stalls"))
    rec = await reaper.wait(task_id, timeout=5)
    assert rec.status is TaskStatus.LOST

    # The owner comes back: its heartbeat finds its liveness gone, so it checks its
    # tasks, and cancels the one the others now consider lost.
    owner._housekeeping = asyncio.create_task(owner._keeper.run())
    await asyncio.wait_for(cancelled.wait(), timeout=5)
    mine = await owner.get_record(task_id)
    assert mine is not None and mine.status is TaskStatus.LOST
    stored = await reaper.get_record(task_id)
    assert stored is not None and stored.status is TaskStatus.LOST  # never overwritten


async def test_execute_of_a_tool_that_finishes_while_creation_waits_for_the_store(
    make_manager: Callable[..., TaskManager],
) -> None:
    """Creation waits for the shared store; the tool may finish, be written and
    leave the local table meanwhile: its result is read back, not lost."""
    tm = make_manager()
    assert await tm.execute(value({"n": 1}), "quick", timeout=0) == '{"n":1}'


async def test_result_from_another_instance_waits_and_raises_like_the_owners(
    make_manager: Callable[..., TaskManager],
) -> None:
    owner, other = make_manager(), make_manager()
    release = asyncio.Event()
    task_id = await owner.create_task(blocked(release, {"rows": [1, 2]}), user_id="ana")
    waiter = asyncio.create_task(other.result(task_id, timeout=5, user_id="ana"))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    release.set()
    assert await waiter == {"rows": [1, 2]}  # decoded from the store: equal, not the same object
    assert await owner.result(task_id) == {"rows": [1, 2]}
    with pytest.raises(TaskNotFound):
        await other.result(task_id, user_id="bo")
    stopped = await owner.create_task(forever())
    assert (await other.stop_task(stopped)).outcome is StopOutcome.CANCELLED
    with pytest.raises(TaskFailed) as info:
        await other.result(stopped, timeout=5)
    assert info.value.status is TaskStatus.CANCELLED


async def test_a_stop_on_the_owner_is_visible_everywhere_on_return(
    make_manager: Callable[..., TaskManager],
) -> None:
    owner, other = make_manager(), make_manager()
    release = asyncio.Event()
    task_id = await owner.create_task(blocked(release), user_id="ana")
    result = await owner.stop_task(task_id)
    assert result.outcome.value == "cancelled"
    rec = await other.get_record(task_id)
    assert rec is not None and rec.status is TaskStatus.CANCELLED
    assert rec.stop_requested_at is not None


async def test_a_remote_stop_of_another_users_task_writes_nothing(
    make_manager: Callable[..., TaskManager],
) -> None:
    owner, other = make_manager(), make_manager()
    release = asyncio.Event()
    task_id = await owner.create_task(blocked(release), user_id="ana")
    result = await other.stop_task(task_id, user_id="bo")
    assert result.outcome.value == "not_found"
    rec = await other.get_record(task_id)
    assert rec is not None and rec.status is TaskStatus.RUNNING
    assert rec.stop_requested_at is None
    release.set()
    assert (await other.wait(task_id, timeout=5)).result == "released"


async def test_a_blocked_event_loop_does_not_make_an_instance_look_dead(
    redis_url: str, key_prefix: str, redis_client: redis.asyncio.Redis
) -> None:
    """Liveness is kept by a thread: a loop blocked past the TTL loses no task."""
    async with TaskManager(
        redis=redis_url,
        prefix=key_prefix,
        instance_id="busy",
        heartbeat_interval=0.1,
        liveness_ttl=0.4,
    ):
        alive_key = Keys(key_prefix).alive("busy")
        time.sleep(1.0)  # noqa: ASYNC251 - blocking the loop on purpose, 2.5x the TTL
        assert await redis_client.exists(alive_key) == 1
    assert await redis_client.exists(alive_key) == 0  # retired: the pulse stopped first


async def test_without_a_pulse_a_blocked_loop_lets_liveness_lapse(
    redis_url: str, key_prefix: str, redis_client: redis.asyncio.Redis
) -> None:
    """The control for the test above: the same stall, the thread switched off."""
    tm = TaskManager(
        redis=redis_url,
        prefix=key_prefix,
        instance_id="busy",
        heartbeat_interval=0.1,
        liveness_ttl=0.4,
    )
    tm._make_pulse = None
    async with tm:
        time.sleep(1.0)  # noqa: ASYNC251 - blocking the loop on purpose
        assert await redis_client.exists(Keys(key_prefix).alive("busy")) == 0


async def test_outcomes_wait_out_an_outage_and_are_written_after_it(
    private_redis: ServerProcess, key_prefix: str
) -> None:
    """In one process: the flusher queues what it cannot write, then writes it all."""
    url = private_redis.url
    tm = TaskManager(
        redis=url, prefix=key_prefix, heartbeat_interval=0.1, liveness_ttl=0.5, shutdown_grace=0
    )
    tm._store.retry_budget = 0.3  # type: ignore[attr-defined]  # give up on Redis quickly
    async with tm:
        long = await tm.create_task(forever(), user_id="ana")
        await asyncio.to_thread(private_redis.stop)

        offline = await tm.create_task(value("made offline"), user_id="ana")
        stopped = await tm.stop_task(long)  # a local stop needs no store
        assert stopped.outcome is StopOutcome.CANCELLED
        for _ in range(100):
            if not tm._keeper.connected:
                break
            await asyncio.sleep(0.05)
        assert not tm._keeper.connected
        assert tm._flusher.backlog == 2  # both final records, queued once each
        assert (await tm.wait(offline, timeout=1)).result == "made offline"  # read locally

        await asyncio.to_thread(private_redis.restart)  # back, and empty
        async with TaskManager(redis=url, prefix=key_prefix) as other:
            for _ in range(100):
                got = [await other.get_record(t) for t in (offline, long)]
                if all(r is not None and r.is_terminal for r in got):
                    break
                await asyncio.sleep(0.05)
            assert [r.status if r else None for r in got] == [
                TaskStatus.COMPLETED,
                TaskStatus.CANCELLED,
            ]
            assert got[0] is not None and got[0].result == "made offline"
        assert tm._keeper.connected and tm._flusher.backlog == 0
