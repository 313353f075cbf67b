"""Stopping tasks: stop_task, stop_item_tasks, list_task_ids_by_item_id, on one or two managers."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

import taskward._stopping
from helpers import Peers, forever, no_unawaited_coroutines, swallow, value
from taskward import StopOutcome, StopResult, TaskManager, TaskRecord, TaskStatus
from taskward._live import STOP_REQUESTED_AT

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine


@pytest.fixture
def manager_defaults(manager_defaults: dict[str, Any]) -> dict[str, Any]:
    """Short stops, too."""
    return {**manager_defaults, "stop_timeout": 1.0}


@pytest.fixture
async def pair(peers: Peers) -> tuple[TaskManager, TaskManager]:
    """Two started managers (instances) sharing one store and one hub."""
    timing: dict[str, Any] = {"heartbeat_interval": 0.1, "liveness_ttl": 0.5}
    a = peers(instance_id="inst-a", **timing)
    b = peers(instance_id="inst-b", **timing)
    await a.start()
    await b.start()
    return a, b


async def status_of(tm: TaskManager, task_id: str) -> TaskStatus:
    rec = await tm.get_record(task_id)
    assert rec is not None
    return rec.status


async def stop_swallowed_once(owner: TaskManager, stopper: TaskManager) -> TaskRecord:
    """`stopper` stops a task of `owner` that swallows the first cancellation.

    The stop is pending at first; returns the record the task ends with (waited
    for on `stopper`, 2 s at most).
    """
    started, release = asyncio.Event(), asyncio.Event()
    task_id = await owner.create_task(swallow(started, release, times=1))
    await started.wait()
    result = await stopper.stop_task(task_id)
    assert result.outcome is StopOutcome.PENDING
    try:
        return await stopper.wait(task_id, timeout=2)
    finally:
        release.set()


# -- stop_task on this instance ------------------------------------------------------------


async def test_stop_a_running_task(tm: TaskManager) -> None:
    started = asyncio.Event()
    task_id = await tm.create_task(forever(started), "chat", user_id="alice")
    await started.wait()
    result = await tm.stop_task(task_id)
    assert result == StopResult(task_id, StopOutcome.CANCELLED, TaskStatus.CANCELLED)
    assert result.stopped
    assert json.loads(result.to_json()) == {
        "task_id": task_id,
        "outcome": "cancelled",
        "status": "cancelled",
    }
    rec = await tm.get_record(task_id)
    assert rec is not None
    assert rec.status is TaskStatus.CANCELLED
    assert rec.error is not None
    assert rec.error.type == "CancelledError"
    assert rec.stop_requested_at is not None
    assert rec.finished_at is not None


async def test_stop_with_the_owners_user_id(tm: TaskManager) -> None:
    started = asyncio.Event()
    task_id = await tm.create_task(forever(started), user_id="alice")
    await started.wait()
    result = await tm.stop_task(task_id, user_id="alice")
    assert result.outcome is StopOutcome.CANCELLED


async def test_stop_a_finished_task(tm: TaskManager) -> None:
    done = await tm.create_task(value(1))
    await tm.wait(done, timeout=2)

    async def fail() -> None:
        raise ValueError("bad")

    failed = await tm.create_task(fail())
    await tm.wait(failed, timeout=2)

    result = await tm.stop_task(done)
    assert result.outcome is StopOutcome.ALREADY_FINISHED
    assert result.status is TaskStatus.COMPLETED
    assert not result.stopped
    result = await tm.stop_task(failed)
    assert result.outcome is StopOutcome.ALREADY_FINISHED
    assert result.status is TaskStatus.FAILED
    assert (await tm.wait(done)).result == 1  # untouched


async def test_stopping_twice(tm: TaskManager) -> None:
    started = asyncio.Event()
    task_id = await tm.create_task(forever(started))
    await started.wait()
    assert (await tm.stop_task(task_id)).outcome is StopOutcome.CANCELLED
    again = await tm.stop_task(task_id)
    assert again.outcome is StopOutcome.ALREADY_FINISHED
    assert again.status is TaskStatus.CANCELLED


async def test_stop_an_unknown_task(tm: TaskManager) -> None:
    unknown = str(uuid.uuid4())
    result = await tm.stop_task(unknown)
    assert result == StopResult(unknown, StopOutcome.NOT_FOUND)
    assert result.status is None
    assert json.loads(result.to_json()) == {"task_id": unknown, "outcome": "not_found"}


async def test_stop_another_users_task_is_not_found_and_it_keeps_running(
    tm: TaskManager,
) -> None:
    started = asyncio.Event()
    task_id = await tm.create_task(forever(started), user_id="alice")
    await started.wait()
    result = await tm.stop_task(task_id, user_id="bob")
    assert result == StopResult(task_id, StopOutcome.NOT_FOUND)
    await asyncio.sleep(0.02)
    rec = await tm.get_record(task_id)
    assert rec is not None
    assert rec.status is TaskStatus.RUNNING
    assert rec.stop_requested_at is None


async def test_a_task_that_swallows_the_cancel_and_returns_is_not_reported_cancelled(
    tm: TaskManager,
) -> None:
    started = asyncio.Event()

    async def swallow_and_return() -> str:
        try:
            await forever(started)
        except asyncio.CancelledError:
            return "partial answer"
        return "unreachable"

    task_id = await tm.create_task(swallow_and_return())
    await started.wait()
    result = await tm.stop_task(task_id)
    assert result.outcome is StopOutcome.ALREADY_FINISHED
    assert result.status is TaskStatus.COMPLETED
    assert not result.stopped
    rec = await tm.wait(task_id, timeout=1)
    assert rec.status is TaskStatus.COMPLETED
    assert rec.result == "partial answer"


async def test_a_task_that_swallows_the_cancel_and_raises_is_failed(tm: TaskManager) -> None:
    started = asyncio.Event()

    async def swallow_and_raise() -> None:
        try:
            await forever(started)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task_id = await tm.create_task(swallow_and_raise())
    await started.wait()
    result = await tm.stop_task(task_id)
    assert result.outcome is StopOutcome.ALREADY_FINISHED
    assert result.status is TaskStatus.FAILED


async def test_a_task_that_keeps_running_is_pending_and_the_request_stays(
    make_manager: Callable[..., TaskManager],
) -> None:
    tm = make_manager(stop_timeout=0.1)
    started, release = asyncio.Event(), asyncio.Event()
    task_id = await tm.create_task(swallow(started, release))
    await started.wait()
    start = time.monotonic()
    result = await tm.stop_task(task_id)
    assert 0.09 <= time.monotonic() - start < 1.0
    assert result.outcome is StopOutcome.PENDING
    assert result.status is TaskStatus.RUNNING
    assert not result.stopped
    assert result.detail
    rec = await tm.get_record(task_id)
    assert rec is not None
    assert rec.status is TaskStatus.RUNNING
    assert rec.stop_requested_at is not None
    release.set()
    assert (await tm.wait(task_id, timeout=1)).status is TaskStatus.COMPLETED


async def test_a_pending_stop_is_retried_until_the_task_is_cancelled(
    make_manager: Callable[..., TaskManager],
) -> None:
    """The request stays: the housekeeping tick cancels the task again."""
    # The stop gives up (pending) well before the first tick re-cancels the task.
    tm = make_manager(stop_timeout=0.05, heartbeat_interval=0.4, liveness_ttl=1.0)
    rec = await stop_swallowed_once(tm, tm)
    assert rec.status is TaskStatus.CANCELLED
    assert rec.error is not None
    assert rec.error.type == "CancelledError"


async def test_stop_a_task_before_it_ever_ran(tm: TaskManager) -> None:
    ran = False

    async def work() -> None:
        nonlocal ran
        ran = True

    with no_unawaited_coroutines():
        coro = work()
        task_id = await tm.create_task(coro)
        result = await tm.stop_task(task_id)  # no await between: the task has not run
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
        del coro
        await asyncio.sleep(0.01)
    assert not ran
    assert result.outcome is StopOutcome.CANCELLED
    rec = await tm.get_record(task_id)
    assert rec is not None
    assert rec.status is TaskStatus.CANCELLED
    assert rec.error is not None
    assert rec.error.type == "CancelledError"


async def test_stop_a_task_before_it_ran_under_a_wrapping_task_factory() -> None:
    """A loop task factory that wraps each coroutine (as tracing tools do) must not
    stop a never-run task from being recorded cancelled, with nothing left unawaited."""
    loop = asyncio.get_running_loop()
    wrapped: list[str] = []

    async def traced(inner: Coroutine[Any, Any, Any]) -> Any:
        wrapped.append("ran")
        return await inner

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Task[Any]:
        return asyncio.Task(traced(coro), loop=loop, **kwargs)

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        async with TaskManager() as tm:
            with no_unawaited_coroutines():
                coro = value(1)
                task_id = await tm.create_task(coro)
                result = await tm.stop_task(task_id)
                assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
                del coro
                await asyncio.sleep(0.01)
            assert result.outcome is StopOutcome.CANCELLED
            rec = await tm.wait(task_id, timeout=1)
            assert rec.status is TaskStatus.CANCELLED
            done = await tm.create_task(value(2))  # and normal tasks run through it
            assert await tm.result(done, timeout=1) == 2
    finally:
        loop.set_task_factory(None)
    assert "ran" in wrapped


# -- stop_item_tasks and list_task_ids_by_item_id -----------------------------------------


async def test_list_task_ids_by_item_id_lists_running_tasks_oldest_first(tm: TaskManager) -> None:
    started = asyncio.Event()
    first = await tm.create_task(forever(started), "chat")
    done = await tm.create_task(value(1), "chat")
    second = await tm.create_task(forever(), "chat")
    elsewhere = await tm.create_task(forever(), "other")
    await started.wait()
    await tm.wait(done, timeout=1)
    assert await tm.list_task_ids_by_item_id("chat") == [first, second]
    assert await tm.list_task_ids_by_item_id("other") == [elsewhere]
    assert await tm.list_task_ids_by_item_id("nothing") == []
    await tm.stop_task(first)
    assert await tm.list_task_ids_by_item_id("chat") == [second]


async def test_stop_item_tasks_stops_every_running_task_of_the_item(tm: TaskManager) -> None:
    ids = [await tm.create_task(forever(), "chat") for _ in range(5)]
    done = await tm.create_task(value(1), "chat")
    other = await tm.create_task(forever(), "other-chat")
    await tm.wait(done, timeout=1)
    results = await tm.stop_item_tasks("chat")
    assert sorted(r.task_id for r in results) == sorted(ids)
    assert all(r.outcome is StopOutcome.CANCELLED for r in results)
    for task_id in ids:
        assert await status_of(tm, task_id) is TaskStatus.CANCELLED
    assert await status_of(tm, other) is TaskStatus.RUNNING
    assert await status_of(tm, done) is TaskStatus.COMPLETED
    assert await tm.list_task_ids_by_item_id("chat") == []
    assert await tm.stop_item_tasks("chat") == []
    assert await tm.stop_item_tasks("never-used") == []


async def test_a_burst_of_stopped_tasks_leaves_nothing_behind(tm: TaskManager) -> None:
    """Tasks stopped before they ran, more than a burst of them, end cancelled, and
    the manager forgets their cancel reasons once their records are written."""
    ids = [await tm.create_task(forever(), "chat") for _ in range(40)]
    results = await tm.stop_item_tasks("chat")
    assert sorted(r.task_id for r in results) == sorted(ids)
    assert {r.outcome for r in results} == {StopOutcome.CANCELLED}
    await tm.records(limit=1)  # written
    assert tm._table.rows == {}
    assert tm._table._cancel_reasons == {}


async def test_stop_item_tasks_leaves_other_users_tasks_alone(tm: TaskManager) -> None:
    alices = [await tm.create_task(forever(), "shared", user_id="alice") for _ in range(3)]
    bobs = [await tm.create_task(forever(), "shared", user_id="bob") for _ in range(2)]
    results = await tm.stop_item_tasks("shared", user_id="alice")
    assert sorted(r.task_id for r in results) == sorted(alices)
    assert all(r.outcome is StopOutcome.CANCELLED for r in results)
    for task_id in bobs:
        assert await status_of(tm, task_id) is TaskStatus.RUNNING
    assert await tm.list_task_ids_by_item_id("shared") == bobs


async def test_stop_item_tasks_stops_a_task_spawned_while_stopping(tm: TaskManager) -> None:
    spawned: list[str] = []

    async def spawns_on_cancel(started: asyncio.Event) -> None:
        try:
            await forever(started)
        except asyncio.CancelledError:
            spawned.append(await tm.create_task(forever(), "chat"))
            raise

    started = asyncio.Event()
    parent = await tm.create_task(spawns_on_cancel(started), "chat")
    await started.wait()
    results = await tm.stop_item_tasks("chat")
    assert len(spawned) == 1
    assert {r.task_id for r in results} == {parent, spawned[0]}
    assert all(r.outcome is StopOutcome.CANCELLED for r in results)
    assert await status_of(tm, spawned[0]) is TaskStatus.CANCELLED
    assert await tm.list_task_ids_by_item_id("chat") == []


async def test_stop_item_tasks_stops_tasks_a_concurrent_loop_keeps_creating(
    tm: TaskManager,
) -> None:
    """Every task of the item created before stop_item_tasks returns ends up stopped."""
    created: list[str] = []
    stopping_done = False

    async def creator() -> None:
        for _ in range(300):
            if stopping_done:
                return
            created.append(await tm.create_task(forever(), "chat"))
            await asyncio.sleep(0)

    created += [await tm.create_task(forever(), "chat") for _ in range(3)]
    loop_task = asyncio.create_task(creator())
    await asyncio.sleep(0)
    results = await tm.stop_item_tasks("chat")
    stopping_done = True
    before_return = list(created)
    await loop_task
    assert len(before_return) > 10  # the loop really ran while stopping
    await asyncio.sleep(0.05)
    still_running = [t for t in before_return if await status_of(tm, t) is TaskStatus.RUNNING]
    assert still_running == []
    reported = {r.task_id for r in results}
    assert reported <= set(created)
    await tm.stop_item_tasks("chat")  # clean up whatever came after


async def test_stop_item_tasks_reports_a_swallowing_task_as_pending(
    make_manager: Callable[..., TaskManager],
) -> None:
    tm = make_manager(stop_timeout=0.1)
    started, release = asyncio.Event(), asyncio.Event()
    stubborn = await tm.create_task(swallow(started, release), "chat")
    normal = await tm.create_task(forever(), "chat")
    await started.wait()
    results = {r.task_id: r for r in await tm.stop_item_tasks("chat")}
    release.set()
    assert results[stubborn].outcome is StopOutcome.PENDING
    assert results[normal].outcome is StopOutcome.CANCELLED


# -- across two managers ----------------------------------------------------------------------


async def test_a_second_manager_stops_anothers_task(
    pair: tuple[TaskManager, TaskManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without A's finished event, B would only learn of the stop by reading the
    # store at its stop_timeout (5 s): an answer well before proves the event.
    monkeypatch.setattr(taskward._stopping, "STOP_POLL", 30.0)
    a, b = pair
    started = asyncio.Event()
    task_id = await a.create_task(forever(started), "chat", user_id="alice")
    await started.wait()

    assert (await b.stop_task(task_id, user_id="bob")).outcome is StopOutcome.NOT_FOUND
    assert await status_of(a, task_id) is TaskStatus.RUNNING

    start = time.monotonic()
    result = await b.stop_task(task_id, user_id="alice")
    assert time.monotonic() - start < 4.0  # confirmed by A's event, not by reading the store
    assert result.outcome is StopOutcome.CANCELLED
    assert result.status is TaskStatus.CANCELLED
    rec = await a.get_record(task_id)
    assert rec is not None
    assert rec.status is TaskStatus.CANCELLED
    assert rec.error is not None
    assert rec.error.type == "CancelledError"
    again = await b.stop_task(task_id)
    assert again.outcome is StopOutcome.ALREADY_FINISHED
    assert again.status is TaskStatus.CANCELLED
    assert (await b.stop_task(str(uuid.uuid4()))).outcome is StopOutcome.NOT_FOUND


async def test_a_second_manager_stops_an_items_tasks_on_both(
    pair: tuple[TaskManager, TaskManager],
) -> None:
    a, b = pair
    on_a = [await a.create_task(forever(), "chat") for _ in range(3)]
    on_b = [await b.create_task(forever(), "chat") for _ in range(2)]
    results = await b.stop_item_tasks("chat")
    assert sorted(r.task_id for r in results) == sorted(on_a + on_b)
    assert all(r.outcome is StopOutcome.CANCELLED for r in results)
    assert await a.list_task_ids_by_item_id("chat") == []


async def test_a_remote_stop_swallowed_once_is_retried_by_the_owner(
    peers: Peers,
) -> None:
    # The stop gives up (pending) well before the owner's first tick re-cancels.
    timing: dict[str, Any] = {"heartbeat_interval": 0.4, "liveness_ttl": 1.0}
    a = peers(**timing)
    b = peers(stop_timeout=0.05, **timing)
    await b.start()
    rec = await stop_swallowed_once(a, b)
    assert rec.status is TaskStatus.CANCELLED


async def test_a_housekeeping_tick_cancels_a_stubborn_task_once(tm: TaskManager) -> None:
    """A stop request known both locally and in the store is one cancellation per
    tick, not two: pending cancellations add up inside the task (`cancelling()`)."""
    started, release = asyncio.Event(), asyncio.Event()
    task_id = await tm.create_task(swallow(started, release))
    await started.wait()
    task = tm._table.tasks[task_id]
    try:
        await tm._store.request_stop(task_id, time.time())  # as another instance would
        assert tm._table.rows[task_id][STOP_REQUESTED_AT] is None  # the owner learns of it...
        await tm._keeper.reconcile_stops()  # ...from its pending stops
        assert tm._table.rows[task_id][STOP_REQUESTED_AT] is not None
        assert task.cancelling() == 1
        await tm._keeper.reconcile_stops()  # now known here and in the store
        assert task.cancelling() == 2
    finally:
        release.set()
