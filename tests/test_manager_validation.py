"""Bad input for every public method: `TypeError` for a wrong type, `ValueError` for a bad value.

A coroutine handed to a call that refuses it is closed, so it never warns
"coroutine ... was never awaited" (warnings are errors in this suite).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from helpers import no_unawaited_coroutines
from taskward import Retention, TaskManager
from taskward.stores.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine


async def work() -> str:
    return "ran"


async def sleeper() -> None:
    await asyncio.sleep(10)


def assert_closed(coro: Coroutine[Any, Any, Any]) -> None:
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


async def refused_and_closed(
    exc: type[Exception], call: Callable[[Coroutine[Any, Any, Any]], Awaitable[Any]]
) -> None:
    """`call(coro)` raises `exc`, closes the coroutine, and nothing warns."""
    coro = work()
    with no_unawaited_coroutines():
        with pytest.raises(exc):
            await call(coro)
        state = inspect.getcoroutinestate(coro)
        del coro
    assert state == inspect.CORO_CLOSED


# Ids a caller may not use, and what each raises.
BAD_IDS: list[tuple[Any, type[Exception]]] = [
    ("", ValueError),
    ("x" * 257, ValueError),
    ("a\x00b", ValueError),
    ("a\x1fb", ValueError),
    ("a\x7fb", ValueError),
    ("a\x85b", ValueError),
    ("a b", ValueError),
    (" lead", ValueError),
    ("trail ", ValueError),
    ("a\tb", ValueError),
    ("a\nb", ValueError),
    ("a\rb", ValueError),
    ("a\u00a0b", ValueError),
    ("{a}", ValueError),
    ("a{", ValueError),
    ("a}", ValueError),
    ("a*", ValueError),
    ("a?", ValueError),
    ("[a]", ValueError),
    ("a\\b", ValueError),
    ('a"b', ValueError),
    (5, TypeError),
    (5.0, TypeError),
    (b"bytes", TypeError),
    (["a"], TypeError),
    (uuid.uuid4(), TypeError),
]
BAD_ID_PARAMS = [pytest.param(v, e, id=repr(v)[:20]) for v, e in BAD_IDS]
# One of each kind, for the checks repeated across every method.
SOME_BAD_ID_PARAMS = [
    pytest.param(v, e, id=repr(v)[:20])
    for v, e in [
        ("", ValueError),
        ("x" * 257, ValueError),
        ("a\x00b", ValueError),
        ("a b", ValueError),
        ("a}", ValueError),
        (5, TypeError),
    ]
]
GOOD_IDS = ["x" * 256, "chat:1", "user@example.com", "日本語", "a-b_c.d/e", "42", "'quoted'"]

BAD_TIMEOUTS: list[tuple[Any, type[Exception]]] = [
    (-1, ValueError),
    (math.nan, ValueError),
    ("1", TypeError),
    (True, TypeError),
]
BAD_TIMEOUT_PARAMS = [pytest.param(v, e, id=repr(v)) for v, e in BAD_TIMEOUTS]

BAD_LIMITS: list[tuple[Any, type[Exception]]] = [
    (0, ValueError),
    (-5, ValueError),
    (1.5, TypeError),
    (10.0, TypeError),
    ("10", TypeError),
    (True, TypeError),
    (None, TypeError),
]
BAD_LIMIT_PARAMS = [pytest.param(v, e, id=repr(v)) for v, e in BAD_LIMITS]


# -- the constructor ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["timeout", "stop_timeout", "heartbeat_interval"])
@pytest.mark.parametrize(
    ("bad", "exc"),
    [
        (0, ValueError),
        (-1, ValueError),
        (math.nan, ValueError),
        ("1", TypeError),
        (True, TypeError),
    ],
)
def test_constructor_refuses_bad_positive_numbers(
    name: str, bad: Any, exc: type[Exception]
) -> None:
    kwargs: dict[str, Any] = {name: bad}
    if name == "heartbeat_interval":
        kwargs["liveness_ttl"] = 100.0
    with pytest.raises(exc, match=name):
        TaskManager(**kwargs)


@pytest.mark.parametrize(
    ("bad", "exc"),
    [(0, ValueError), (-1, ValueError), (math.nan, ValueError), ("1", TypeError)],
)
def test_constructor_refuses_a_bad_liveness_ttl(bad: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        TaskManager(liveness_ttl=bad)


@pytest.mark.parametrize("name", ["shutdown_grace", "shutdown_timeout"])
@pytest.mark.parametrize(
    ("bad", "exc"), [(-1, ValueError), (math.nan, ValueError), ("1", TypeError), (None, TypeError)]
)
def test_constructor_refuses_bad_shutdown_times(name: str, bad: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=name):
        TaskManager(**{name: bad})


def test_constructor_accepts_zero_shutdown_times() -> None:
    tm = TaskManager(shutdown_grace=0, shutdown_timeout=0)
    assert (tm.shutdown_grace, tm.shutdown_timeout) == (0.0, 0.0)


@pytest.mark.parametrize(("heartbeat", "ttl"), [(1.0, 1.0), (2.0, 1.0)])
def test_liveness_ttl_must_be_longer_than_the_heartbeat(heartbeat: float, ttl: float) -> None:
    with pytest.raises(ValueError, match="liveness_ttl"):
        TaskManager(heartbeat_interval=heartbeat, liveness_ttl=ttl)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"result_ttl": 0}, ValueError),
        ({"result_ttl": -1}, ValueError),
        ({"result_ttl": math.nan}, ValueError),
        ({"result_ttl": "60"}, TypeError),
        ({"max_finished": 0}, ValueError),
        ({"max_finished": 1.5}, TypeError),
        ({"max_finished": "10"}, TypeError),
        ({"max_output": 0}, ValueError),
        ({"max_output": 2.5}, TypeError),
        ({"max_backlog": 0}, ValueError),
        ({"max_backlog": 1.5}, TypeError),
        ({"max_backlog": "10"}, TypeError),
    ],
    ids=repr,
)
def test_constructor_refuses_bad_limits(kwargs: dict[str, Any], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        TaskManager(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"result_ttl": 0},
        {"result_ttl": math.nan},
        {"max_finished": 0},
        {"max_finished": 2.5},
        {"max_output": 0},
        {"max_output": 2.5},
    ],
    ids=repr,
)
def test_retention_refuses_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)):
        Retention(**kwargs)


@pytest.mark.parametrize(("bad", "exc"), BAD_ID_PARAMS)
def test_constructor_refuses_a_bad_instance_id(bad: Any, exc: type[Exception]) -> None:
    if bad == "":
        pytest.skip("an empty instance_id means: make one up")
    with pytest.raises(exc, match="instance_id"):
        TaskManager(instance_id=bad)


def test_constructor_refuses_redis_and_a_store_together() -> None:
    with pytest.raises(ValueError, match="redis"):
        TaskManager(redis="redis://127.0.0.1:1/0", store=MemoryStore())


@pytest.mark.parametrize(
    "kwargs", [{"max_finished": 5}, {"result_ttl": 5.0}, {"max_output": 5}], ids=repr
)
def test_retention_given_with_a_store_is_refused(kwargs: dict[str, Any]) -> None:
    """Never silently ignored: the store's own retention would win without a word."""
    with pytest.raises(ValueError, match="store"):
        TaskManager(store=MemoryStore(Retention()), **kwargs)


# -- create_task -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "not_a_coroutine",
    [None, 1, "coro", work, lambda: None, iter([1]), (x for x in [1])],
    ids=["None", "int", "str", "coroutine-function", "lambda", "iterator", "generator"],
)
async def test_create_task_needs_a_coroutine(tm: TaskManager, not_a_coroutine: Any) -> None:
    with pytest.raises(TypeError, match="coroutine"):
        await tm.create_task(not_a_coroutine)


async def test_create_task_refuses_a_future(tm: TaskManager) -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(TypeError, match="coroutine"):
        await tm.create_task(fut)  # type: ignore[arg-type]
    task = asyncio.create_task(work())
    with pytest.raises(TypeError, match="coroutine"):
        await tm.create_task(task)  # type: ignore[arg-type]
    assert await task == "ran"


@pytest.mark.parametrize("field", ["item_id", "user_id"])
@pytest.mark.parametrize(("bad", "exc"), BAD_ID_PARAMS)
async def test_create_task_refuses_bad_ids_and_closes_the_coroutine(
    tm: TaskManager, field: str, bad: Any, exc: type[Exception]
) -> None:
    if field == "item_id":
        await refused_and_closed(exc, lambda coro: tm.create_task(coro, bad))
    else:
        await refused_and_closed(exc, lambda coro: tm.create_task(coro, user_id=bad))
    assert (await tm.records()).records == []


@pytest.mark.parametrize("space", ["\u2003", "\u3000", "\u2028", "\u1680"])
async def test_create_task_refuses_unicode_whitespace_in_ids(tm: TaskManager, space: str) -> None:
    await refused_and_closed(ValueError, lambda coro: tm.create_task(coro, f"a{space}b"))
    await refused_and_closed(ValueError, lambda coro: tm.create_task(coro, user_id=f"a{space}b"))


@pytest.mark.parametrize("good", GOOD_IDS)
async def test_create_task_accepts_good_ids(tm: TaskManager, good: str) -> None:
    task_id = await tm.create_task(work(), good, user_id=good)
    rec = await tm.wait(task_id, timeout=1, user_id=good)
    assert (rec.item_id, rec.user_id, rec.result) == (good, good, "ran")


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"name": 5}, TypeError),
        ({"name": b"n"}, TypeError),
        ({"metadata": ["k", "v"]}, TypeError),
        ({"metadata": "k=v"}, TypeError),
        ({"max_runtime": 0}, ValueError),
        ({"max_runtime": -1}, ValueError),
        ({"max_runtime": math.nan}, ValueError),
        ({"max_runtime": "5"}, TypeError),
        ({"max_runtime": True}, TypeError),
        ({"channel_id": 5}, TypeError),
        ({"channel_id": None}, TypeError),
        ({"platform": 5}, TypeError),
        ({"platform": ["slack"]}, TypeError),
    ],
    ids=repr,
)
async def test_create_task_refuses_bad_options_and_closes_the_coroutine(
    tm: TaskManager, kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    await refused_and_closed(exc, lambda coro: tm.create_task(coro, **kwargs))


# -- execute ------------------------------------------------------------------------------------


@pytest.mark.parametrize("background", [True, False])
async def test_execute_needs_a_coroutine(tm: TaskManager, background: bool) -> None:
    with pytest.raises(TypeError, match="coroutine"):
        await tm.execute(work, background=background)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="coroutine"):
        await tm.execute(None, background=background)  # type: ignore[arg-type]


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize(("bad", "exc"), BAD_TIMEOUT_PARAMS)
async def test_execute_refuses_a_bad_timeout_and_closes_the_coroutine(
    tm: TaskManager, background: bool, bad: Any, exc: type[Exception]
) -> None:
    await refused_and_closed(
        exc, lambda coro: tm.execute(coro, "tool", timeout=bad, background=background)
    )


@pytest.mark.parametrize(("bad", "exc"), [("a b", ValueError), ("{x}", ValueError), (5, TypeError)])
async def test_execute_refuses_a_bad_user_id_and_closes_the_coroutine(
    tm: TaskManager, bad: Any, exc: type[Exception]
) -> None:
    await refused_and_closed(exc, lambda coro: tm.execute(coro, "tool", user_id=bad))


async def test_execute_refuses_a_bad_tool_name_and_closes_the_coroutine(tm: TaskManager) -> None:
    await refused_and_closed(TypeError, lambda coro: tm.execute(coro, 5))  # type: ignore[arg-type]


# -- reads --------------------------------------------------------------------------------------


# Every public call taking an id, as `call(tm, task_id, bad)`; the tool APIs
# (get_result, await_result, list_tasks) take "" to mean "no user / no item".
TASK_ID_CALLS: dict[str, Callable[[TaskManager, Any], Awaitable[Any]]] = {
    "get_record": lambda tm, bad: tm.get_record(bad),
    "wait": lambda tm, bad: tm.wait(bad, timeout=0.1),
    "read_output": lambda tm, bad: tm.read_output(bad),
    "stop_task": lambda tm, bad: tm.stop_task(bad),
}
USER_ID_CALLS: dict[str, Callable[[TaskManager, str, Any], Awaitable[Any]]] = {
    "get_record": lambda tm, t, bad: tm.get_record(t, user_id=bad),
    "wait": lambda tm, t, bad: tm.wait(t, timeout=0.1, user_id=bad),
    "read_output": lambda tm, t, bad: tm.read_output(t, user_id=bad),
    "stop_task": lambda tm, t, bad: tm.stop_task(t, user_id=bad),
    "stop_item_tasks": lambda tm, t, bad: tm.stop_item_tasks("item", user_id=bad),
    "records": lambda tm, t, bad: tm.records(user_id=bad),
    "get_result": lambda tm, t, bad: tm.get_result(t, user_id=bad),
    "await_result": lambda tm, t, bad: tm.await_result(t, timeout=0.1, user_id=bad),
    "list_tasks": lambda tm, t, bad: tm.list_tasks(user_id=bad),
}
ITEM_ID_CALLS: dict[str, Callable[[TaskManager, Any], Awaitable[Any]]] = {
    "list_task_ids_by_item_id": lambda tm, bad: tm.list_task_ids_by_item_id(bad),
    "stop_item_tasks": lambda tm, bad: tm.stop_item_tasks(bad),
    "records": lambda tm, bad: tm.records(item_id=bad),
    "list_tasks": lambda tm, bad: tm.list_tasks(item_id=bad),
}
EMPTY_MEANS_NONE = {"get_result", "await_result", "list_tasks"}


@pytest.mark.parametrize("call", TASK_ID_CALLS)
@pytest.mark.parametrize(("bad", "exc"), SOME_BAD_ID_PARAMS)
async def test_calls_by_task_id_refuse_bad_ids(
    tm: TaskManager, call: str, bad: Any, exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        await TASK_ID_CALLS[call](tm, bad)


@pytest.mark.parametrize("call", USER_ID_CALLS)
@pytest.mark.parametrize(("bad", "exc"), SOME_BAD_ID_PARAMS)
async def test_every_user_id_argument_refuses_bad_ids(
    tm: TaskManager, call: str, bad: Any, exc: type[Exception]
) -> None:
    if bad == "" and call in EMPTY_MEANS_NONE:
        pytest.skip("the tool APIs take an empty user id to mean no user")
    task_id = await tm.create_task(work(), "item", user_id="alice")
    await tm.wait(task_id, timeout=1)
    with pytest.raises(exc):
        await USER_ID_CALLS[call](tm, task_id, bad)


@pytest.mark.parametrize(("bad", "exc"), SOME_BAD_ID_PARAMS)
def test_events_refuses_a_bad_user_or_item_id(
    tm: TaskManager, bad: Any, exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        tm.events(user_id=bad)
    with pytest.raises(exc):
        tm.events(item_id=bad)


@pytest.mark.parametrize("call", ITEM_ID_CALLS)
@pytest.mark.parametrize(("bad", "exc"), SOME_BAD_ID_PARAMS)
async def test_every_item_id_argument_refuses_bad_ids(
    tm: TaskManager, call: str, bad: Any, exc: type[Exception]
) -> None:
    if bad == "" and call in EMPTY_MEANS_NONE:
        pytest.skip("the tool APIs take an empty item id to mean no item")
    with pytest.raises(exc):
        await ITEM_ID_CALLS[call](tm, bad)


@pytest.mark.parametrize(("bad", "exc"), SOME_BAD_ID_PARAMS)
def test_events_refuses_a_bad_task_id(tm: TaskManager, bad: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        tm.events(task_id=bad)


async def test_a_missing_item_id_is_a_type_error(tm: TaskManager) -> None:
    with pytest.raises(TypeError):
        await tm.list_task_ids_by_item_id(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await tm.stop_item_tasks(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("bad", "exc"), BAD_TIMEOUT_PARAMS)
async def test_waits_refuse_bad_timeouts(tm: TaskManager, bad: Any, exc: type[Exception]) -> None:
    task_id = await tm.create_task(sleeper())
    with pytest.raises(exc, match="timeout"):
        await tm.wait(task_id, timeout=bad)
    with pytest.raises(exc, match="timeout"):
        await tm.await_result(task_id, timeout=bad)


@pytest.mark.parametrize(("bad", "exc"), BAD_LIMIT_PARAMS)
async def test_records_refuses_a_bad_limit(tm: TaskManager, bad: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="limit"):
        await tm.records(limit=bad)


@pytest.mark.parametrize("bad", ["abc", "-1", "", "1.5", " 1", "1e3", "9" * 30])
async def test_records_refuses_a_malformed_cursor(tm: TaskManager, bad: str) -> None:
    await tm.wait(await tm.create_task(work()), timeout=1)
    with pytest.raises(ValueError, match="cursor"):
        await tm.records(cursor=bad)


@pytest.mark.parametrize("bad", [5, 5.0, b"5", ["5"]], ids=repr)
async def test_records_refuses_a_cursor_that_is_not_a_str(tm: TaskManager, bad: Any) -> None:
    with pytest.raises(TypeError, match="cursor"):
        await tm.records(cursor=bad)


@pytest.mark.parametrize("bad", ["bogus", "RUNNING", "done", "not_found", ""])
async def test_records_refuses_a_bad_status(tm: TaskManager, bad: str) -> None:
    with pytest.raises(ValueError):
        await tm.records(status=bad)
    if bad:  # list_tasks takes "" to mean no filter
        with pytest.raises(ValueError):
            await tm.list_tasks(status=bad)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"after": -1}, ValueError),
        ({"after": 1.0}, TypeError),
        ({"after": "0"}, TypeError),
        ({"after": True}, TypeError),
        ({"after": None}, TypeError),
        *(({"limit": v}, e) for v, e in BAD_LIMITS),
    ],
    ids=repr,
)
async def test_read_output_refuses_bad_cursors_and_limits(
    tm: TaskManager, kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    task_id = await tm.create_task(work())
    with pytest.raises(exc):
        await tm.read_output(task_id, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"kinds": ["bogus"]}, ValueError),
        ({"maxsize": 0}, ValueError),
        ({"maxsize": -1}, ValueError),
        ({"maxsize": 1.5}, TypeError),
        ({"maxsize": "10"}, TypeError),
    ],
    ids=repr,
)
def test_events_refuses_bad_options(
    tm: TaskManager, kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        tm.events(**kwargs)
    assert tm._hub.streams == []  # nothing half-subscribed


@pytest.mark.parametrize(
    "garbage", [None, 123, b"id", "", "x" * 257, "has space", "{x}", "\x00"], ids=repr
)
async def test_tool_reads_answer_garbage_ids_with_not_found(tm: TaskManager, garbage: Any) -> None:
    assert '"status":"not_found"' in await tm.get_result(garbage)
    assert '"status":"not_found"' in await tm.await_result(garbage, timeout=0.1)
