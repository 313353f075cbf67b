"""taskward.compat.openwebui: open-webui 0.12.4's task functions on default managers."""

from __future__ import annotations

import asyncio
import gc
import inspect
import uuid
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio

from taskward import StopOutcome, StopResult, TaskManager, TaskStatus
from taskward.compat import openwebui as ow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine


@pytest.fixture(autouse=True)
async def _fresh_defaults() -> AsyncIterator[None]:
    """Every test starts and ends without default managers."""
    await ow.aclose_default_managers()
    yield
    await ow.aclose_default_managers()


async def returns(value: Any) -> Any:
    await asyncio.sleep(0)
    return value


async def fails() -> None:
    await asyncio.sleep(0)
    raise RuntimeError("boom")


async def sleeps() -> None:
    await asyncio.sleep(3600)


async def records_start(started: list[bool]) -> None:
    started.append(True)
    await asyncio.sleep(3600)


async def waits_for(event: asyncio.Event, value: Any = "done") -> Any:
    await event.wait()
    return value


async def swallows_cancel(linger: float = 0.0) -> str:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(linger)
    return "ignored"


async def status_of(task_id: str, redis: Any = None) -> TaskStatus | None:
    """The status the default manager records for a taskward id."""
    rec = await ow.get_default_manager(redis).get_record(task_id)
    return None if rec is None else rec.status


async def settle(task: asyncio.Task[Any]) -> None:
    """Let `task` finish, whatever its outcome."""
    await asyncio.wait((task,), timeout=5)
    assert task.done()


# -- create_task -----------------------------------------------------------------------------


async def test_create_task_returns_a_uuid4_and_a_task_giving_the_result() -> None:
    task_id, task = await ow.create_task(None, returns(42))
    assert uuid.UUID(task_id).version == 4
    assert isinstance(task, asyncio.Task)
    assert await task == 42
    assert await status_of(task_id) is TaskStatus.COMPLETED


async def test_awaiting_the_task_raises_the_coroutine_exception() -> None:
    task_id, task = await ow.create_task(None, fails())
    with pytest.raises(RuntimeError, match="boom"):
        await task
    rec = await ow.get_default_manager().get_record(task_id)
    assert rec is not None
    assert rec.status is TaskStatus.FAILED
    assert rec.error is not None
    assert (rec.error.type, rec.error.message) == ("RuntimeError", "boom")


async def test_a_failure_nobody_awaits_is_recorded_and_not_reported_as_unretrieved() -> None:
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        task_id, task = await ow.create_task(None, fails())
        await settle(task)
        del task
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []
    assert await status_of(task_id) is TaskStatus.FAILED


async def test_cancelling_the_returned_task_cancels_the_coroutine() -> None:
    task_id, task = await ow.create_task(None, sleeps(), "chat-1")
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await ow.get_default_manager().wait(task_id, timeout=5)
    assert await status_of(task_id) is TaskStatus.CANCELLED
    assert await ow.list_task_ids_by_item_id(None, "chat-1") == []


async def test_cancelling_the_task_before_it_ran_still_records_the_cancellation() -> None:
    task_id, task = await ow.create_task(None, sleeps())
    task.cancel()  # no step of either task has run yet
    with pytest.raises(asyncio.CancelledError):
        await task
    rec = await ow.get_default_manager().wait(task_id, timeout=5)
    assert rec.status is TaskStatus.CANCELLED


async def test_create_task_names_the_record_after_the_coroutine() -> None:
    task_id, task = await ow.create_task(None, returns(1))
    await task
    rec = await ow.get_default_manager().get_record(task_id)
    assert rec is not None
    assert rec.name == "returns"


async def test_create_task_refuses_a_non_coroutine() -> None:
    with pytest.raises(TypeError, match="a coroutine was expected"):
        await ow.create_task(None, "not a coroutine")  # type: ignore[arg-type]


async def test_create_task_refuses_a_plain_generator() -> None:
    """asyncio.iscoroutine accepts generators on Python 3.11; awaiting one fails later."""

    def numbers() -> Any:
        yield 1

    with pytest.raises(TypeError, match="a coroutine was expected"):
        await ow.create_task(None, numbers())


@pytest.mark.parametrize(
    ("item_id", "task_id"),
    [("has space", None), ("chat-1", "has space"), ("chat-1", "x" * 300)],
)
async def test_create_task_refuses_unusable_ids_and_closes_the_coroutine(
    item_id: str, task_id: str | None
) -> None:
    coro = sleeps()
    with pytest.raises(ValueError, match="id"):
        await ow.create_task(None, coro, item_id, task_id=task_id)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    assert await ow.list_tasks(None) == []


async def test_a_false_item_id_means_no_item() -> None:
    event = asyncio.Event()
    task_id, task = await ow.create_task(None, waits_for(event), "")
    rec = await ow.get_default_manager().get_record(task_id)
    assert rec is not None
    assert rec.item_id is None
    assert await ow.list_tasks(None) == [task_id]
    event.set()
    await task


# -- caller-chosen task ids (open-webui 0.12.4 passes the message's task id) -------------------


async def test_a_caller_chosen_task_id_names_the_task_everywhere() -> None:
    task_id, task = await ow.create_task(None, sleeps(), "chat-1", task_id="msg-task-1")
    assert task_id == "msg-task-1"
    assert await ow.list_tasks(None) == ["msg-task-1"]
    assert await ow.list_task_ids_by_item_id(None, "chat-1") == ["msg-task-1"]
    (rec,) = (await ow.get_default_manager().records()).records
    assert rec.task_id == "msg-task-1"  # the same id on every instance
    assert await ow.stop_task(None, "msg-task-1") == {
        "status": True,
        "message": "Task msg-task-1 successfully stopped.",
    }
    await settle(task)
    assert task.cancelled()
    await asyncio.sleep(0)  # the done callback forgets the name
    assert await ow.stop_task(None, "msg-task-1") == {
        "status": False,
        "message": "Task with ID msg-task-1 not found.",
    }


async def test_a_caller_chosen_task_id_in_use_is_refused_and_free_once_finished() -> None:
    event = asyncio.Event()
    _, first = await ow.create_task(None, waits_for(event), task_id="same")
    coro = sleeps()
    with pytest.raises(ValueError, match="already in use"):
        await ow.create_task(None, coro, task_id="same")
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    event.set()
    await first
    await asyncio.sleep(0)
    task_id, second = await ow.create_task(None, returns(2), task_id="same")
    assert (task_id, await second) == ("same", 2)


# -- listing ------------------------------------------------------------------------------------


async def test_list_tasks_gives_running_tasks_oldest_first() -> None:
    assert await ow.list_tasks(None) == []
    event = asyncio.Event()
    ids = [(await ow.create_task(None, waits_for(event), f"chat-{i % 2}"))[0] for i in range(5)]
    _, quick = await ow.create_task(None, returns(None))
    await quick
    assert await ow.list_tasks(None) == ids
    event.set()
    await asyncio.sleep(0.01)
    assert await ow.list_tasks(None) == []


async def test_list_tasks_reads_every_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ow, "LIST_PAGE_SIZE", 2)
    event = asyncio.Event()
    ids = [(await ow.create_task(None, waits_for(event)))[0] for _ in range(5)]
    assert await ow.list_tasks(None) == ids
    event.set()


async def test_list_task_ids_by_item_id() -> None:
    event = asyncio.Event()
    a1, _ = await ow.create_task(None, waits_for(event), "chat-a")
    b1, _ = await ow.create_task(None, waits_for(event), "chat-b")
    a2, _ = await ow.create_task(None, waits_for(event), "chat-a")
    assert await ow.list_task_ids_by_item_id(None, "chat-a") == [a1, a2]
    assert await ow.list_task_ids_by_item_id(None, "chat-b") == [b1]
    for unknown in ("chat-none", "", None, "has space", 5):
        assert await ow.list_task_ids_by_item_id(None, unknown) == []  # type: ignore[arg-type]
    event.set()
    await asyncio.sleep(0.01)
    assert await ow.list_task_ids_by_item_id(None, "chat-a") == []


async def test_has_active_tasks() -> None:
    event = asyncio.Event()
    assert await ow.has_active_tasks(None, "chat-1") is False
    _, task = await ow.create_task(None, waits_for(event), "chat-1")
    assert await ow.has_active_tasks(None, "chat-1") is True
    assert await ow.has_active_tasks(None, "chat-2") is False
    event.set()
    await task
    assert await ow.has_active_tasks(None, "chat-1") is False


# -- cleanup_task ----------------------------------------------------------------------------


async def test_cleanup_task_deregisters_without_cancelling() -> None:
    event = asyncio.Event()
    task_id, task = await ow.create_task(None, waits_for(event), "chat-1")
    await ow.cleanup_task(None, task_id, "chat-1")
    assert await ow.list_tasks(None) == []
    assert await ow.list_task_ids_by_item_id(None, "chat-1") == []
    assert await ow.has_active_tasks(None, "chat-1") is False
    assert await ow.stop_task(None, task_id) == {
        "status": False,
        "message": f"Task with ID {task_id} not found.",
    }
    assert await ow.stop_item_tasks(None, "chat-1") == {
        "status": True,
        "message": "No tasks found for item chat-1.",
    }
    assert not task.done()
    assert await status_of(task_id) is TaskStatus.RUNNING  # the record tells the truth
    event.set()
    assert await task == "done"


async def test_a_task_that_cleans_itself_up_is_no_longer_active_as_it_ends() -> None:
    # The pattern of open-webui 0.12.4's chat completion: deregister, then ask
    # whether the chat still has tasks, from inside the ending task.
    seen: list[bool] = []

    async def chat_completion() -> None:
        await asyncio.sleep(0)
        await ow.cleanup_task(None, "reply-1", "chat-1")
        seen.append(await ow.has_active_tasks(None, "chat-1"))

    _, other = await ow.create_task(None, sleeps(), "chat-2")
    _, task = await ow.create_task(None, chat_completion(), "chat-1", task_id="reply-1")
    await task
    assert seen == [False]
    other.cancel()


async def test_cleanup_task_of_unknown_or_finished_tasks_does_nothing() -> None:
    task_id, task = await ow.create_task(None, returns(1), "chat-1")
    await task
    await asyncio.sleep(0)
    await ow.cleanup_task(None, task_id, "chat-1")
    await ow.cleanup_task(None, "unknown")
    await ow.cleanup_task(None, "")
    event = asyncio.Event()
    running_id, running = await ow.create_task(None, waits_for(event), "chat-1")
    assert await ow.list_task_ids_by_item_id(None, "chat-1") == [running_id]
    event.set()
    await running


# -- stop_task -----------------------------------------------------------------------------------


async def test_create_list_stop_round_trip() -> None:
    task_id, task = await ow.create_task(None, sleeps(), "chat-1")
    assert await ow.list_tasks(None) == [task_id]
    assert await ow.stop_task(None, task_id) == {
        "status": True,
        "message": f"Task {task_id} successfully stopped.",
    }
    assert await ow.list_tasks(None) == []
    assert await ow.list_task_ids_by_item_id(None, "chat-1") == []
    assert task.cancelled()
    assert await status_of(task_id) is TaskStatus.CANCELLED


@pytest.mark.parametrize("task_id", ["no-such-task", str(uuid.uuid4()), "", "has space", None])
async def test_stop_task_of_an_unknown_id_says_not_found(task_id: Any) -> None:
    assert await ow.stop_task(None, task_id) == {
        "status": False,
        "message": f"Task with ID {task_id} not found.",
    }


async def test_stop_task_of_a_finished_task_says_not_found() -> None:
    task_id, task = await ow.create_task(None, returns(1))
    await task
    assert await ow.stop_task(None, task_id) == {
        "status": False,
        "message": f"Task with ID {task_id} not found.",
    }
    assert await status_of(task_id) is TaskStatus.COMPLETED


async def test_stop_task_before_the_task_ran_closes_the_coroutine() -> None:
    started: list[bool] = []
    coro = records_start(started)
    task_id, task = await ow.create_task(None, coro, "chat-1")
    assert await ow.stop_task(None, task_id) == {
        "status": True,
        "message": f"Task {task_id} successfully stopped.",
    }
    assert task.cancelled()
    assert started == []  # the manager cancelled it before its first step
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    assert await status_of(task_id) is TaskStatus.CANCELLED
    assert await ow.list_tasks(None) == []


async def test_closing_before_the_task_ran_closes_the_coroutine() -> None:
    manager = TaskManager(shutdown_grace=0)
    ow.set_default_manager(manager)
    started: list[bool] = []
    coro = records_start(started)
    _, task = await ow.create_task(None, coro)
    await manager.aclose()
    await settle(task)
    assert task.cancelled()
    assert started == []
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


async def test_stop_task_of_a_task_that_swallows_the_cancellation() -> None:
    task_id, task = await ow.create_task(None, swallows_cancel())
    await asyncio.sleep(0.01)
    assert await ow.stop_task(None, task_id) == {
        "status": True,
        "message": f"Task {task_id} successfully cancelled.",
    }
    assert await task == "ignored"
    assert await status_of(task_id) is TaskStatus.COMPLETED


async def test_stop_task_not_confirmed_in_time_says_cancellation_requested() -> None:
    ow.set_default_manager(TaskManager(stop_timeout=0.05))
    task_id, task = await ow.create_task(None, swallows_cancel(linger=0.3))
    await asyncio.sleep(0.01)
    assert await ow.stop_task(None, task_id) == {
        "status": True,
        "message": f"Cancellation requested for {task_id}.",
    }
    assert await task == "ignored"


async def test_stop_task_of_a_task_gone_between_lookup_and_stop_says_not_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager = ow.get_default_manager()
    task_id, task = await ow.create_task(None, sleeps())

    async def gone(task_id: str, user_id: str | None = None) -> StopResult:
        return StopResult(task_id, StopOutcome.NOT_FOUND)

    monkeypatch.setattr(manager, "stop_task", gone)
    assert await ow.stop_task(None, task_id) == {
        "status": False,
        "message": f"Task with ID {task_id} not found.",
    }
    task.cancel()


# -- stop_item_tasks -------------------------------------------------------------------------------


async def test_stop_item_tasks_stops_the_item_and_leaves_others() -> None:
    ids_tasks = [await ow.create_task(None, sleeps(), "chat-1") for _ in range(3)]
    other_id, other = await ow.create_task(None, sleeps(), "chat-2")
    assert await ow.stop_item_tasks(None, "chat-1") == {
        "status": True,
        "message": "All tasks for item chat-1 stopped.",
    }
    for task_id, task in ids_tasks:
        assert task.cancelled()
        assert await status_of(task_id) is TaskStatus.CANCELLED
    assert await ow.list_tasks(None) == [other_id]
    assert not other.done()
    other.cancel()


@pytest.mark.parametrize("item_id", ["chat-none", "", "has space"])
async def test_stop_item_tasks_of_an_item_without_tasks(item_id: str) -> None:
    assert await ow.stop_item_tasks(None, item_id) == {
        "status": True,
        "message": f"No tasks found for item {item_id}.",
    }


async def test_stop_item_tasks_after_its_tasks_finished() -> None:
    _, task = await ow.create_task(None, returns(1), "chat-1")
    await task
    assert await ow.stop_item_tasks(None, "chat-1") == {
        "status": True,
        "message": "No tasks found for item chat-1.",
    }


async def test_stop_item_tasks_by_caller_chosen_ids() -> None:
    _, task = await ow.create_task(None, swallows_cancel(), "chat-1", task_id="reply-1")
    await asyncio.sleep(0.01)
    assert await ow.stop_item_tasks(None, "chat-1") == {
        "status": True,
        "message": "All tasks for item chat-1 stopped.",
    }
    assert await task == "ignored"


# -- default managers ------------------------------------------------------------------------------


async def test_get_default_manager_is_created_once() -> None:
    manager = ow.get_default_manager()
    assert ow.get_default_manager() is manager
    assert ow.get_default_manager("") is manager
    task_id, task = await ow.create_task(None, returns(1))
    await task
    assert await manager.get_record(task_id) is not None


async def test_switching_default_managers() -> None:
    first = ow.get_default_manager()
    async with TaskManager() as mine:
        assert ow.set_default_manager(mine) is first
        assert ow.get_default_manager() is mine
        task_id, task = await ow.create_task(None, sleeps(), "chat-1")
        assert mine.running_count == 1
        assert await first.get_record(task_id) is None
        assert ow.set_default_manager(mine) is mine  # again: what it knows is kept
        assert ow.set_default_manager(None) is mine
        fresh = ow.get_default_manager()
        assert fresh is not mine
        assert fresh is not first
        assert await ow.list_tasks(None) == []
        assert ow.set_default_manager(mine) is fresh
        assert await ow.stop_task(None, task_id) == {
            "status": True,
            "message": f"Task {task_id} successfully stopped.",
        }
        assert task.cancelled()
        await fresh.aclose()
        await first.aclose()


async def test_set_default_manager_checks_its_argument() -> None:
    with pytest.raises(TypeError, match="TaskManager"):
        ow.set_default_manager(object())  # type: ignore[arg-type]
    closed = TaskManager()
    await closed.aclose()
    with pytest.raises(ValueError, match="closed"):
        ow.set_default_manager(closed)


async def test_aclose_default_managers_drains_and_starts_anew() -> None:
    manager = TaskManager(shutdown_grace=0)
    ow.set_default_manager(manager)
    _, task = await ow.create_task(None, sleeps(), "chat-1")
    await ow.aclose_default_managers()
    assert manager.closed
    assert task.cancelled()
    fresh = ow.get_default_manager()
    assert fresh is not manager
    assert not fresh.closed
    await ow.aclose_default_managers()
    await ow.aclose_default_managers()  # idempotent


async def test_a_closed_default_manager_is_replaced() -> None:
    manager = ow.get_default_manager()
    await manager.aclose()
    assert ow.get_default_manager() is not manager
    task_id, task = await ow.create_task(None, returns(3))
    assert await task == 3
    assert uuid.UUID(task_id).version == 4


async def test_aclose_default_managers_raises_what_a_manager_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ow, "_new_manager", _recording_factory([]))
    manager = ow.get_default_manager()
    other = ow.get_default_manager("redis://localhost:6379/0")

    async def broken() -> None:
        raise OSError("cannot close")

    monkeypatch.setattr(manager, "aclose", broken)
    with pytest.raises(OSError, match="cannot close"):
        await ow.aclose_default_managers()
    assert other.closed
    assert ow.get_default_manager() is not manager


def _recording_factory(
    made: list[tuple[Any, TaskManager]],
) -> Callable[[Any], TaskManager]:
    """A manager factory that records what each manager was bound to (in-process managers)."""

    def factory(redis: Any) -> TaskManager:
        manager = TaskManager()
        made.append((redis, manager))
        return manager

    return factory


async def test_one_default_manager_per_client_object_and_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[tuple[Any, TaskManager]] = []
    monkeypatch.setattr(ow, "_new_manager", _recording_factory(made))
    client_a, client_b = object(), object()
    local = ow.get_default_manager()
    a = ow.get_default_manager(client_a)
    assert ow.get_default_manager(client_a) is a
    b = ow.get_default_manager(client_b)
    url = ow.get_default_manager("redis://localhost:6379/0")
    assert ow.get_default_manager("redis://localhost:6379/0") is url
    assert len({id(m) for m in (local, a, b, url)}) == 4
    assert [target for target, _ in made] == [
        None,
        client_a,
        client_b,
        "redis://localhost:6379/0",
    ]
    task_id, task = await ow.create_task(client_a, sleeps(), "chat-1")
    assert await ow.list_tasks(client_a) == [task_id]
    assert await ow.list_tasks(client_b) == []
    assert await ow.list_tasks(None) == []
    assert (await ow.stop_task(client_a, task_id))["status"] is True
    assert task.cancelled()


# -- what open-webui starts with the app -----------------------------------------------------------


@pytest.mark.parametrize(
    "start", [ow.redis_task_command_listener, ow.redis_task_heartbeat], ids=lambda f: f.__name__
)
async def test_app_startup_coroutines_start_the_manager_and_run_until_cancelled(
    monkeypatch: pytest.MonkeyPatch, start: Callable[[Any], Coroutine[Any, Any, None]]
) -> None:
    made: list[tuple[Any, TaskManager]] = []
    monkeypatch.setattr(ow, "_new_manager", _recording_factory(made))
    client = object()
    app = SimpleNamespace(state=SimpleNamespace(redis=client))
    runner = asyncio.create_task(start(app))
    await asyncio.sleep(0.05)
    assert not runner.done()
    assert [target for target, _ in made] == [client]
    manager = made[0][1]
    assert ow.get_default_manager(client) is manager
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert not manager.closed  # closing is aclose_default_managers' job


async def test_app_startup_retries_a_failed_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ow, "START_RETRY_INTERVAL", 0.01)
    manager = ow.get_default_manager()
    real_start = manager.start
    attempts: list[float] = []
    third = asyncio.Event()

    async def flaky_start() -> None:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) < 3:
            raise ConnectionError("store unreachable")
        third.set()
        await real_start()

    monkeypatch.setattr(manager, "start", flaky_start)
    app = SimpleNamespace(state=SimpleNamespace(redis=None))
    runner = asyncio.create_task(ow.redis_task_command_listener(app))
    await asyncio.wait_for(third.wait(), timeout=5)
    await asyncio.sleep(0.01)
    assert not runner.done()
    assert len(attempts) == 3
    waits = [
        r.args[-1]  # type: ignore[index]  # the message's arguments: (error, wait)
        for r in caplog.records
        if "could not start" in r.getMessage()
    ]
    assert waits == [0.01, 0.02]  # the wait grows
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner


async def test_app_startup_without_redis_uses_the_in_process_manager() -> None:
    app = SimpleNamespace(state=SimpleNamespace())
    runner = asyncio.create_task(ow.redis_task_command_listener(app))
    await asyncio.sleep(0.01)
    assert not runner.done()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner


# -- with Redis ------------------------------------------------------------------------------------


@pytest.fixture
async def redis_app(
    redis_client: redis.asyncio.Redis, key_prefix: str
) -> AsyncIterator[redis.asyncio.Redis]:
    """`redis_client`, with a default manager bound to it on the test's key prefix."""
    try:
        manager = TaskManager(redis=redis_client, prefix=key_prefix)
    except (ImportError, NotImplementedError) as exc:
        pytest.skip(f"TaskManager(redis=...) is not available yet: {exc!r}")
    ow.set_default_manager(manager, redis=redis_client)
    yield redis_client
    await ow.aclose_default_managers()  # before the client and the keys go


@pytest.mark.redis
async def test_redis_round_trip(redis_app: redis.asyncio.Redis) -> None:
    task_id, task = await ow.create_task(redis_app, sleeps(), "chat-r")
    assert ow.get_default_manager(redis_app) is not ow.get_default_manager()
    assert await ow.list_tasks(redis_app) == [task_id]
    assert await ow.list_task_ids_by_item_id(redis_app, "chat-r") == [task_id]
    assert await ow.has_active_tasks(redis_app, "chat-r") is True
    assert await ow.list_tasks(None) == []
    assert await ow.stop_task(redis_app, task_id) == {
        "status": True,
        "message": f"Task {task_id} successfully stopped.",
    }
    assert task.cancelled()
    assert await ow.list_tasks(redis_app) == []
    assert await ow.has_active_tasks(redis_app, "chat-r") is False


@pytest.mark.redis
async def test_redis_unknown_and_finished_ids_are_not_found(
    redis_app: redis.asyncio.Redis,
) -> None:
    # open-webui 0.12.4 answers "Task <id> stopped." here, whatever the id.
    assert await ow.stop_task(redis_app, "no-such-task") == {
        "status": False,
        "message": "Task with ID no-such-task not found.",
    }
    task_id, task = await ow.create_task(redis_app, returns(1), "chat-r")
    assert await task == 1
    assert await ow.stop_task(redis_app, task_id) == {
        "status": False,
        "message": f"Task with ID {task_id} not found.",
    }
    assert await ow.stop_item_tasks(redis_app, "chat-r") == {
        "status": True,
        "message": "No tasks found for item chat-r.",
    }
    assert await ow.list_task_ids_by_item_id(redis_app, "chat-r") == []


@pytest.mark.redis
async def test_redis_stop_from_another_instance_is_confirmed(
    redis_app: redis.asyncio.Redis, redis_url: str, key_prefix: str
) -> None:
    other_client = redis.asyncio.Redis.from_url(redis_url)
    try:
        ow.set_default_manager(
            TaskManager(redis=other_client, prefix=key_prefix), redis=other_client
        )
        ids_tasks = [await ow.create_task(redis_app, sleeps(), "chat-r") for _ in range(2)]
        ids = [task_id for task_id, _ in ids_tasks]
        assert await ow.list_tasks(other_client) == ids
        assert await ow.list_task_ids_by_item_id(other_client, "chat-r") == ids
        assert await ow.stop_task(other_client, ids[0]) == {
            "status": True,
            "message": f"Task {ids[0]} successfully stopped.",
        }
        assert ids_tasks[0][1].cancelled()
        assert await ow.stop_item_tasks(other_client, "chat-r") == {
            "status": True,
            "message": "All tasks for item chat-r stopped.",
        }
        assert ids_tasks[1][1].cancelled()
        assert await ow.list_tasks(redis_app) == []
    finally:
        await ow.aclose_default_managers()
        await other_client.aclose()


@pytest.mark.redis
async def test_redis_a_caller_chosen_id_is_stopped_from_another_instance(
    redis_app: redis.asyncio.Redis, redis_url: str, key_prefix: str
) -> None:
    other_client = redis.asyncio.Redis.from_url(redis_url)
    try:
        ow.set_default_manager(
            TaskManager(redis=other_client, prefix=key_prefix), redis=other_client
        )
        task_id, task = await ow.create_task(redis_app, sleeps(), "chat-r", task_id="msg-7")
        assert task_id == "msg-7"
        assert await ow.list_tasks(other_client) == ["msg-7"]
        assert await ow.stop_task(other_client, "msg-7") == {
            "status": True,
            "message": "Task msg-7 successfully stopped.",
        }
        with pytest.raises(asyncio.CancelledError):
            await task
        # Finished, the id is free again for a new task (here only, as an alias).
        again, second = await ow.create_task(redis_app, returns(3), "chat-r", task_id="msg-7")
        assert (again, await second) == ("msg-7", 3)
    finally:
        await ow.aclose_default_managers()
        await other_client.aclose()


@pytest.mark.redis
async def test_redis_with_a_decoding_client_as_open_webui_makes(
    redis_url: str, key_prefix: str
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        ow.set_default_manager(TaskManager(redis=client, prefix=key_prefix), redis=client)
        task_id, task = await ow.create_task(client, sleeps(), "chat-d")
        assert await ow.list_task_ids_by_item_id(client, "chat-d") == [task_id]
        assert await ow.stop_item_tasks(client, "chat-d") == {
            "status": True,
            "message": "All tasks for item chat-d stopped.",
        }
        assert task.cancelled()
        assert await ow.has_active_tasks(client, "chat-d") is False
    finally:
        await ow.aclose_default_managers()
        await client.aclose()
