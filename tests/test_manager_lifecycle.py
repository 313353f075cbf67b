"""TaskManager on the in-process store: creating, reading, waiting, max_runtime, closing.

Also two managers sharing one `MemoryStore` and `MemoryHub`: reads, waits and
liveness across instances.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

import taskward._reads
from helpers import Peers, blocked, fail, forever, no_unawaited_coroutines, swallow, value
from taskward import (
    TERMINAL,
    ManagerClosed,
    TaskError,
    TaskFailed,
    TaskManager,
    TaskNotFound,
    TaskRecord,
    TaskStatus,
    TaskTimeout,
    current_task_id,
)
from taskward.stores.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import Callable


# -- ids, statuses, records ------------------------------------------------------------------


async def test_create_task_returns_a_uuid4_id(tm: TaskManager) -> None:
    task_id = await tm.create_task(value(1))
    parsed = uuid.UUID(task_id)
    assert parsed.version == 4
    assert str(parsed) == task_id  # canonical lowercase 8-4-4-4-12 form
    other = await tm.create_task(value(2))
    assert other != task_id


def test_task_status_values_and_terminal() -> None:
    assert {s.value for s in TaskStatus} == {"running", "completed", "failed", "cancelled", "lost"}
    assert frozenset({"completed", "failed", "cancelled", "lost"}) == TERMINAL
    assert TaskStatus.RUNNING not in TERMINAL
    assert not TaskStatus.RUNNING.is_terminal
    assert all(s.is_terminal for s in TERMINAL)
    assert TaskStatus("lost") is TaskStatus.LOST


async def test_record_of_a_running_then_completed_task(tm: TaskManager) -> None:
    release = asyncio.Event()
    before = time.time()
    task_id = await tm.create_task(
        blocked(release),
        "chat-1",
        user_id="alice",
        name="search",
        metadata={"k": "v"},
        channel_id="C1",
        platform="slack",
    )
    rec = await tm.get_record(task_id)
    assert rec is not None
    assert rec.task_id == task_id
    assert rec.status is TaskStatus.RUNNING
    assert not rec.is_terminal
    assert (rec.item_id, rec.user_id, rec.name) == ("chat-1", "alice", "search")
    assert (rec.channel_id, rec.platform) == ("C1", "slack")
    assert dict(rec.metadata) == {"k": "v"}
    assert rec.instance_id == tm.instance_id
    assert before <= rec.created_at <= time.time()
    assert rec.finished_at is None
    assert rec.result is None
    assert rec.error is None

    release.set()
    final = await tm.wait(task_id, timeout=2)
    assert final.status is TaskStatus.COMPLETED
    assert final.is_terminal
    assert final.result == "released"
    assert final.error is None
    assert final.finished_at is not None
    assert final.created_at <= final.finished_at <= time.time()
    again = await tm.get_record(task_id)
    assert again is not None
    assert again.status is TaskStatus.COMPLETED
    assert again.result == "released"


async def test_failed_task_records_error_type_and_message(tm: TaskManager) -> None:
    task_id = await tm.create_task(fail("boom"))
    rec = await tm.wait(task_id, timeout=2)
    assert rec.status is TaskStatus.FAILED
    assert rec.error is not None
    assert (rec.error.type, rec.error.message) == ("RuntimeError", "boom")
    assert rec.result is None


async def test_get_record_hides_unknown_and_other_users_tasks(tm: TaskManager) -> None:
    task_id = await tm.create_task(value(1), user_id="alice")
    await tm.wait(task_id, timeout=2)
    assert await tm.get_record(str(uuid.uuid4())) is None
    assert await tm.get_record(task_id, user_id="bob") is None
    mine = await tm.get_record(task_id, user_id="alice")
    assert mine is not None
    assert mine.user_id == "alice"


async def test_records_filters_and_orders_newest_first(tm: TaskManager) -> None:
    release = asyncio.Event()
    a1 = await tm.create_task(value(1), "item-a", user_id="alice")
    a2 = await tm.create_task(blocked(release), "item-b", user_id="alice")
    b1 = await tm.create_task(value(3), "item-a", user_id="bob")
    await tm.wait(a1, timeout=2)
    await tm.wait(b1, timeout=2)

    def ids(page_records: list[TaskRecord]) -> list[str]:
        return [r.task_id for r in page_records]

    assert ids((await tm.records()).records) == [b1, a2, a1]
    assert ids((await tm.records(user_id="alice")).records) == [a2, a1]
    assert ids((await tm.records(item_id="item-a")).records) == [b1, a1]
    assert ids((await tm.records(status=TaskStatus.RUNNING)).records) == [a2]
    assert ids((await tm.records(status="completed")).records) == [b1, a1]
    assert ids((await tm.records(user_id="alice", item_id="item-a")).records) == [a1]
    assert ids((await tm.records(user_id="alice", status="completed")).records) == [a1]
    assert (await tm.records(user_id="carol")).records == []
    release.set()


async def test_records_paging_visits_every_record_once(tm: TaskManager) -> None:
    created = [await tm.create_task(value(i), "item") for i in range(25)]
    await tm.wait(created[-1], timeout=2)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await tm.records(item_id="item", limit=10, cursor=cursor)
        seen += [r.task_id for r in page.records]
        pages += 1
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == created[::-1]
    assert pages == 3


async def test_records_by_status_are_newest_first_whatever_the_finish_order(
    tm: TaskManager,
) -> None:
    """Creation order, as for every other filter, even when tasks finish out of order."""
    gates = [asyncio.Event() for _ in range(3)]
    ids = [await tm.create_task(blocked(g)) for g in gates]
    for i in (2, 0, 1):  # finish the newest first, then the oldest
        gates[i].set()
        await tm.wait(ids[i], timeout=2)
    page = await tm.records(status="completed")
    assert [r.task_id for r in page.records] == ids[::-1]

    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await tm.records(status="completed", limit=1, cursor=cursor)
        seen += [r.task_id for r in page.records]
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == ids[::-1]


async def test_returned_records_are_copies(tm: TaskManager) -> None:
    release = asyncio.Event()
    task_id = await tm.create_task(blocked(release), "item", user_id="u", metadata={"k": 1})

    held = await tm.get_record(task_id)
    assert held is not None
    listed = (await tm.records()).records[0]
    for rec in (held, listed):
        rec.status = TaskStatus.FAILED
        rec.progress = 0.9
        rec.user_id = "mallory"
        rec.metadata["k"] = 2  # type: ignore[index]
    fresh = await tm.get_record(task_id, user_id="u")
    assert fresh is not None
    assert fresh.status is TaskStatus.RUNNING
    assert fresh.progress is None
    assert dict(fresh.metadata) == {"k": 1}
    assert held.status is TaskStatus.FAILED  # and the copy I hold does not change under me

    release.set()
    final = await tm.wait(task_id, timeout=2)
    assert held.status is TaskStatus.FAILED
    final.status = TaskStatus.LOST
    final.result = "tampered"
    again = await tm.get_record(task_id)
    assert again is not None
    assert again.status is TaskStatus.COMPLETED
    assert again.result == "released"


async def test_metadata_given_to_create_task_is_copied(tm: TaskManager) -> None:
    meta = {"k": 1}
    task_id = await tm.create_task(forever(), metadata=meta)
    meta["k"] = 2
    meta["new"] = 3
    rec = await tm.get_record(task_id)
    assert rec is not None
    assert dict(rec.metadata) == {"k": 1}


# -- wait --------------------------------------------------------------------------------


async def test_wait_returns_the_final_record(tm: TaskManager) -> None:
    release = asyncio.Event()
    task_id = await tm.create_task(blocked(release))
    waiter = asyncio.create_task(tm.wait(task_id, timeout=2))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    release.set()
    rec = await waiter
    assert rec.status is TaskStatus.COMPLETED
    assert rec.result == "released"


async def test_wait_without_timeout_and_on_a_finished_task(tm: TaskManager) -> None:
    task_id = await tm.create_task(value(7))
    assert (await tm.wait(task_id)).result == 7
    # Already terminal: answered at once, even with a zero timeout.
    assert (await tm.wait(task_id, timeout=0)).result == 7


async def test_result_is_what_the_coroutine_returned_as_every_reader_sees_it(
    tm: TaskManager,
) -> None:
    """The owner reads the encoded value too (a tuple is a list), as other instances do."""
    payload = {"rows": (1, 2, 3)}
    task_id = await tm.create_task(value(payload))
    assert await tm.result(task_id) == {"rows": [1, 2, 3]}
    assert await tm.result(task_id, timeout=0) == {"rows": [1, 2, 3]}  # terminal: at once
    release = asyncio.Event()
    later = await tm.create_task(blocked(release, "done"))
    waiter = asyncio.create_task(tm.result(later, timeout=5))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    release.set()
    assert await waiter == "done"


async def test_result_of_a_failed_task_raises_task_failed_with_its_error(tm: TaskManager) -> None:
    task_id = await tm.create_task(fail("boom"))
    with pytest.raises(TaskFailed) as info:
        await tm.result(task_id, timeout=1)
    assert info.value.task_id == task_id
    assert info.value.status is TaskStatus.FAILED
    assert info.value.error == TaskError("RuntimeError", "boom")
    assert str(info.value) == f"task {task_id!r} ended failed: RuntimeError: boom"


async def test_result_of_a_stopped_task_raises_task_failed_cancelled(tm: TaskManager) -> None:
    task_id = await tm.create_task(forever())
    await asyncio.sleep(0)
    assert (await tm.stop_task(task_id)).outcome == "cancelled"
    with pytest.raises(TaskFailed) as info:
        await tm.result(task_id)
    assert info.value.status is TaskStatus.CANCELLED
    assert info.value.error is not None
    assert info.value.error.type == "CancelledError"


async def test_result_not_found_timeout_and_bad_arguments(tm: TaskManager) -> None:
    unknown = str(uuid.uuid4())
    with pytest.raises(TaskNotFound):
        await tm.result(unknown)
    mine = await tm.create_task(value(1), user_id="alice")
    with pytest.raises(TaskNotFound):  # another user's task looks like a missing one
        await tm.result(mine, user_id="bob")
    assert await tm.result(mine, user_id="alice") == 1
    running = await tm.create_task(forever())
    with pytest.raises(TaskTimeout):
        await tm.result(running, timeout=0.02)
    with pytest.raises(ValueError, match="timeout"):
        await tm.result(mine, timeout=-1)
    with pytest.raises(TypeError):
        await tm.result(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task_id"):
        await tm.result("")


async def test_wait_raises_task_timeout_and_the_task_keeps_running(tm: TaskManager) -> None:
    task_id = await tm.create_task(forever())
    start = time.monotonic()
    with pytest.raises(TaskTimeout) as info:
        await tm.wait(task_id, timeout=0.05)
    assert 0.04 <= time.monotonic() - start < 1.0
    assert info.value.task_id == task_id
    assert info.value.timeout == 0.05
    assert isinstance(info.value, TimeoutError)
    rec = await tm.get_record(task_id)
    assert rec is not None
    assert rec.status is TaskStatus.RUNNING


async def test_wait_raises_task_not_found(tm: TaskManager) -> None:
    unknown = str(uuid.uuid4())
    with pytest.raises(TaskNotFound) as info:
        await tm.wait(unknown, timeout=1)
    assert info.value.task_id == unknown
    assert isinstance(info.value, LookupError)

    mine = await tm.create_task(value(1), user_id="alice")
    with pytest.raises(TaskNotFound):
        await tm.wait(mine, timeout=1, user_id="bob")
    assert (await tm.wait(mine, timeout=1, user_id="alice")).result == 1


async def test_waits_without_a_timeout_on_a_running_task_of_this_instance(
    tm: TaskManager,
) -> None:
    """Another user's running task is not found at once (not waited for); its owner's
    result() and wait() return when it ends, wait() with the final record."""
    release = asyncio.Event()
    task_id = await tm.create_task(blocked(release), user_id="alice")
    with pytest.raises(TaskNotFound):
        await asyncio.wait_for(tm.result(task_id, user_id="bob"), 1)
    with pytest.raises(TaskNotFound):
        await asyncio.wait_for(tm.wait(task_id, user_id="bob"), 1)
    result = asyncio.create_task(tm.result(task_id, user_id="alice"))
    record = asyncio.create_task(tm.wait(task_id))
    await asyncio.sleep(0.01)
    assert not result.done()
    assert not record.done()
    release.set()
    assert await result == "released"
    rec = await record
    assert (rec.status, rec.result) == (TaskStatus.COMPLETED, "released")
    failing = await tm.create_task(fail("no"), user_id="alice")
    with pytest.raises(TaskFailed) as info:
        await tm.result(failing)
    assert info.value.status is TaskStatus.FAILED


# -- max_runtime -------------------------------------------------------------------------


async def test_max_runtime_cancels_with_max_runtime_exceeded(tm: TaskManager) -> None:
    task_id = await tm.create_task(forever(), max_runtime=0.05)
    rec = await tm.wait(task_id, timeout=2)
    assert rec.status is TaskStatus.CANCELLED
    assert rec.error is not None
    assert rec.error.type == "MaxRuntimeExceeded"
    assert rec.max_runtime == 0.05
    assert rec.finished_at is not None
    assert rec.finished_at - rec.created_at >= 0.04


async def test_a_plain_stop_is_not_max_runtime_exceeded(tm: TaskManager) -> None:
    started = asyncio.Event()
    task_id = await tm.create_task(forever(started), max_runtime=5)
    await started.wait()
    result = await tm.stop_task(task_id)
    assert result.outcome == "cancelled"
    rec = await tm.wait(task_id, timeout=2)
    assert rec.status is TaskStatus.CANCELLED
    assert rec.error is not None
    assert rec.error.type == "CancelledError"


async def test_timeout_error_raised_by_the_task_is_a_plain_failure(tm: TaskManager) -> None:
    async def times_out() -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)

    task_id = await tm.create_task(times_out(), max_runtime=5)
    rec = await tm.wait(task_id, timeout=2)
    assert rec.status is TaskStatus.FAILED
    assert rec.error is not None
    assert rec.error.type == "TimeoutError"


async def test_task_within_max_runtime_completes(tm: TaskManager) -> None:
    task_id = await tm.create_task(value("ok"), max_runtime=5)
    rec = await tm.wait(task_id, timeout=2)
    assert rec.status is TaskStatus.COMPLETED
    assert rec.result == "ok"


async def test_current_task_id(tm: TaskManager) -> None:
    async def whoami() -> str | None:
        await asyncio.sleep(0)
        return current_task_id()

    assert current_task_id() is None
    task_id = await tm.create_task(whoami())
    assert (await tm.wait(task_id, timeout=2)).result == task_id
    assert current_task_id() is None


async def test_running_count(tm: TaskManager) -> None:
    release = asyncio.Event()
    ids = [await tm.create_task(blocked(release)) for _ in range(3)]
    assert tm.running_count == 3
    release.set()
    for task_id in ids:
        await tm.wait(task_id, timeout=2)
    assert tm.running_count == 0


# -- start and close -----------------------------------------------------------------------


async def test_manager_starts_lazily_on_first_use(make_manager: Callable[..., TaskManager]) -> None:
    store = MemoryStore()
    tm = make_manager(store=store)
    assert store._alive == {}  # constructing does not register anything
    assert not tm.closed
    task_id = await tm.create_task(value(1))
    assert tm.instance_id in store._alive
    assert (await tm.wait(task_id, timeout=2)).result == 1

    reader_store = MemoryStore()
    reader = make_manager(store=reader_store)
    assert await reader.get_record(str(uuid.uuid4())) is None  # a read starts it too
    assert reader.instance_id in reader_store._alive


async def test_async_context_manager_starts_and_closes() -> None:
    store = MemoryStore()
    async with TaskManager(shutdown_grace=0) as tm:
        task_id = await tm.create_task(value(5))
        assert (await tm.wait(task_id, timeout=2)).result == 5
        assert not tm.closed
    assert tm.closed
    with pytest.raises(ManagerClosed):
        await tm.create_task(value(1))

    async with TaskManager(store=store, shutdown_grace=0) as tm2:
        assert tm2.instance_id in store._alive
    assert tm2.instance_id not in store._alive  # retired on close


async def test_aclose_is_idempotent(make_manager: Callable[..., TaskManager]) -> None:
    tm = make_manager()
    await tm.create_task(value(1))
    await tm.aclose()
    assert tm.closed
    await tm.aclose()
    assert tm.closed


async def test_aclose_of_a_never_started_manager() -> None:
    tm = TaskManager()
    await tm.aclose()
    assert tm.closed
    coro = value(1)
    with no_unawaited_coroutines(), pytest.raises(ManagerClosed):
        await tm.create_task(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    with pytest.raises(ManagerClosed):
        await tm.start()


async def test_create_task_after_close_raises_and_closes_the_coroutine(
    make_manager: Callable[..., TaskManager],
) -> None:
    tm = make_manager()
    await tm.create_task(value(1))
    await tm.aclose()
    ran = False

    async def work() -> None:
        nonlocal ran
        ran = True

    coro = work()
    with no_unawaited_coroutines(), pytest.raises(ManagerClosed):
        await tm.create_task(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    assert not ran
    with no_unawaited_coroutines(), pytest.raises(ManagerClosed):
        await tm.create_task(work())  # dropped at once: would warn if left unclosed


async def test_aclose_gives_running_tasks_the_grace_period() -> None:
    store = MemoryStore()
    tm = TaskManager(store=store, shutdown_grace=2.0, shutdown_timeout=1.0)

    async def short() -> str:
        await asyncio.sleep(0.05)
        return "finished in grace"

    task_id = await tm.create_task(short())
    start = time.monotonic()
    await tm.aclose()
    assert time.monotonic() - start < 1.0  # returns as soon as the tasks are done
    rec = await store.get(task_id)
    assert rec is not None
    assert rec.status is TaskStatus.COMPLETED
    assert rec.result == "finished in grace"


async def test_aclose_cancels_tasks_after_the_grace_period() -> None:
    store = MemoryStore()
    tm = TaskManager(store=store, shutdown_grace=0.05, shutdown_timeout=1.0)
    started = asyncio.Event()
    running = await tm.create_task(forever(started))
    not_started = await tm.create_task(forever())  # may not have run yet when closing begins
    await started.wait()
    start = time.monotonic()
    await tm.aclose()
    assert 0.04 <= time.monotonic() - start < 1.0
    for task_id in (running, not_started):
        rec = await store.get(task_id)
        assert rec is not None
        assert rec.status is TaskStatus.CANCELLED
        assert rec.error is not None
        assert rec.error.type == "CancelledError"


async def test_aclose_without_grace_cancels_unstarted_tasks_without_warnings() -> None:
    store = MemoryStore()
    tm = TaskManager(store=store, shutdown_grace=0, shutdown_timeout=1.0)
    with no_unawaited_coroutines():
        ids = [await tm.create_task(forever()) for _ in range(3)]
        await tm.aclose()
    for task_id in ids:
        rec = await store.get(task_id)
        assert rec is not None
        assert rec.status is TaskStatus.CANCELLED


async def test_aclose_records_a_straggler_as_lost_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    tm = TaskManager(store=store, shutdown_grace=0, shutdown_timeout=0.1)
    release, started = asyncio.Event(), asyncio.Event()
    task_id = await tm.create_task(swallow(started, release))
    await started.wait()
    with caplog.at_level(logging.WARNING, logger="taskward"):
        start = time.monotonic()
        await tm.aclose()
        elapsed = time.monotonic() - start
    assert 0.09 <= elapsed < 1.0
    rec = await store.get(task_id)
    assert rec is not None
    assert rec.status is TaskStatus.LOST
    assert rec.error is not None
    assert rec.error.type == "TaskLost"
    assert any(task_id in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    # The abandoned coroutine finishing later does not rewrite the terminal state.
    release.set()
    await asyncio.sleep(0.01)
    rec = await store.get(task_id)
    assert rec is not None
    assert rec.status is TaskStatus.LOST


async def test_shutdown_timeout_zero_does_not_wait_for_stragglers() -> None:
    """A zero hard deadline means "do not wait", as a zero grace does; never "wait forever"."""
    store = MemoryStore()
    tm = TaskManager(store=store, shutdown_grace=0, shutdown_timeout=0)
    release, started = asyncio.Event(), asyncio.Event()
    task_id = await tm.create_task(swallow(started, release))
    await started.wait()
    loop = asyncio.get_running_loop()
    loop.call_later(1.0, release.set)  # bounds the test if aclose() waits for the straggler
    start = time.monotonic()
    await tm.aclose()
    elapsed = time.monotonic() - start
    release.set()
    await asyncio.sleep(0.01)
    rec = await store.get(task_id)
    assert rec is not None
    assert elapsed < 0.5
    assert rec.status is TaskStatus.LOST


async def test_records_are_readable_through_the_store_after_close() -> None:
    store = MemoryStore()
    async with TaskManager(store=store) as tm:
        task_id = await tm.create_task(value({"answer": 42}))
        await tm.wait(task_id, timeout=2)
    rec = await store.get(task_id)
    assert rec is not None
    assert rec.result == {"answer": 42}


# -- two managers on one store -------------------------------------------------------------


async def test_a_second_manager_reads_and_waits_for_anothers_task(
    peers: Peers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without A's finished event, B's wait would only re-read the store after 30 s,
    # long after its 3 s timeout: finishing in time proves the event woke it.
    monkeypatch.setattr(taskward._reads, "WAIT_POLL", 30.0)
    a = peers(instance_id="inst-a")
    b = peers(instance_id="inst-b")
    await b.start()
    release = asyncio.Event()
    task_id = await a.create_task(blocked(release), "chat", user_id="alice")

    seen = await b.get_record(task_id)
    assert seen is not None
    assert seen.status is TaskStatus.RUNNING
    assert seen.instance_id == "inst-a"
    assert await b.get_record(task_id, user_id="bob") is None
    assert [r.task_id for r in (await b.records(item_id="chat")).records] == [task_id]
    assert await b.list_task_ids_by_item_id("chat") == [task_id]

    waiter = asyncio.create_task(b.wait(task_id, timeout=3))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    release.set()
    rec = await waiter
    assert rec.status is TaskStatus.COMPLETED
    assert rec.result == "released"
    with pytest.raises(TaskNotFound):
        await b.wait(task_id, timeout=1, user_id="bob")


async def test_a_task_is_visible_to_a_manager_started_after_its_creation(
    peers: Peers,
) -> None:
    """Once create_task returns, every manager on the store can find the task."""
    a = peers()
    b = peers()  # not started yet: lazily, below
    release = asyncio.Event()
    task_id = await a.create_task(blocked(release), "chat")
    seen = await b.get_record(task_id)
    release.set()
    assert seen is not None
    assert seen.status is TaskStatus.RUNNING


async def test_tasks_of_a_manager_that_stopped_heartbeating_are_marked_lost(
    peers: Peers,
) -> None:
    timing: dict[str, Any] = {"heartbeat_interval": 0.05, "liveness_ttl": 0.3}
    a = peers(instance_id="inst-a", **timing)
    b = peers(instance_id="inst-b", **timing)
    await b.start()
    release = asyncio.Event()
    task_id = await a.create_task(blocked(release), user_id="alice")
    waiter = asyncio.create_task(b.wait(task_id, timeout=5))

    # A's process "hangs": its housekeeping (heartbeat) stops.
    assert a._housekeeping is not None
    a._housekeeping.cancel()

    rec = await waiter
    assert rec.status is TaskStatus.LOST
    assert rec.error is not None
    assert rec.error.type == "TaskLost"
    assert "inst-a" in rec.error.message
    assert rec.finished_at is not None
    again = await b.get_record(task_id)
    assert again is not None
    assert again.status is TaskStatus.LOST
    release.set()


async def test_reap_after_the_alive_deadline_marks_running_tasks_lost(
    peers: Peers,
) -> None:
    store = peers.store
    a = peers(heartbeat_interval=0.05, liveness_ttl=0.2)
    release = asyncio.Event()
    task_id = await a.create_task(blocked(release))
    done = await a.create_task(value(1))
    await a.wait(done, timeout=2)
    assert await store.reap(time.time()) == []  # alive: nothing to reap

    assert a._housekeeping is not None
    a._housekeeping.cancel()
    await asyncio.sleep(0.3)
    now = time.time()
    lost = await store.reap(now)
    assert [r.task_id for r in lost] == [task_id]
    assert lost[0].status is TaskStatus.LOST
    assert lost[0].finished_at == now
    rec = await store.get(task_id)
    assert rec is not None
    assert rec.status is TaskStatus.LOST
    finished = await store.get(done)
    assert finished is not None
    assert finished.status is TaskStatus.COMPLETED  # terminal records are left alone
    release.set()


async def test_aclose_cancels_a_task_a_peer_marked_lost(
    peers: Peers,
) -> None:
    """Marked lost while this instance stalled; closing must still stop the coroutine."""
    store = peers.store
    a = peers(
        heartbeat_interval=0.05,
        liveness_ttl=0.2,
        shutdown_timeout=0.2,
    )
    started, release = asyncio.Event(), asyncio.Event()
    cancelled = False

    async def work() -> None:
        nonlocal cancelled
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled = True
            raise

    task_id = await a.create_task(work())
    await started.wait()
    await a.records(limit=1)  # written to the store
    assert a._housekeeping is not None
    a._housekeeping.cancel()  # A stalls: no heartbeat
    await asyncio.sleep(0.3)
    assert [r.task_id for r in await store.reap(time.time())] == [task_id]
    try:
        await a.aclose()
        assert cancelled
    finally:
        release.set()
        await asyncio.sleep(0)
    rec = await store.get(task_id)
    assert rec is not None
    assert rec.status is TaskStatus.LOST


async def test_a_caller_chosen_task_id_is_used_once(tm: TaskManager) -> None:
    task_id = await tm.create_task(value(1), task_id="message-42")
    assert task_id == "message-42"
    assert (await tm.wait(task_id, timeout=2)).result == 1
    again = value(2)
    with pytest.raises(ValueError, match="already in use"):
        await tm.create_task(again, task_id="message-42")
    with pytest.raises(ValueError):
        await tm.create_task(value(3), task_id="has space")
    with pytest.raises(TypeError):
        await tm.create_task(value(3), task_id=42)  # type: ignore[arg-type]
