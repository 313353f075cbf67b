"""The strings a language model reads: execute, get_result, await_result, list_tasks."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from helpers import Peers, blocked, fail, forever, value
from taskward import TaskManager, TaskStatus, report_progress

if TYPE_CHECKING:
    from collections.abc import Callable


@pytest.fixture
def manager_defaults(manager_defaults: dict[str, Any]) -> dict[str, Any]:
    """Short waits and stops, too."""
    return {**manager_defaults, "timeout": 0.5, "stop_timeout": 1.0}


def parse(text: str) -> dict[str, Any]:
    """Parse an envelope and check it is one compact JSON object."""
    data = json.loads(text)
    assert isinstance(data, dict)
    assert text == json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return data


# -- execute ---------------------------------------------------------------------------------


async def test_execute_returns_a_str_result_inline(tm: TaskManager) -> None:
    assert await tm.execute(value("the answer"), "lookup", timeout=1) == "the answer"
    assert await tm.execute(value(""), "lookup", timeout=1) == ""
    assert await tm.execute(value('{"already": "json"}'), timeout=1) == '{"already": "json"}'


async def test_execute_of_a_quick_tool_on_a_shared_store(peers: Peers) -> None:
    """The tool may finish, and be written and forgotten locally, while creation
    waits for the shared store: its result is read back, not lost."""
    tm = peers()
    assert await tm.execute(value("fast"), "quick", timeout=1) == "fast"
    assert await tm.execute(value({"n": 1}), "quick", timeout=0) == '{"n":1}'


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"a": 1, "b": [1, 2]}, '{"a":1,"b":[1,2]}'),
        ([1, "two", None], '[1,"two",null]'),
        (42, "42"),
        (1.5, "1.5"),
        (None, "null"),
        (True, "true"),
        ({"text": "café ☕"}, '{"text":"café ☕"}'),
    ],
)
async def test_execute_returns_other_results_as_json(
    tm: TaskManager, result: Any, expected: str
) -> None:
    text = await tm.execute(value(result), "tool", timeout=1)
    assert text == expected
    assert json.loads(text) == result


async def test_execute_backgrounds_a_slow_tool_and_never_cancels_it(tm: TaskManager) -> None:
    cancelled = False
    release = asyncio.Event()

    async def slow_tool() -> dict[str, str]:
        nonlocal cancelled
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled = True
            raise
        return {"report": "done"}

    start = time.monotonic()
    text = await tm.execute(slow_tool(), "research", user_id="alice", timeout=0.05)
    assert 0.04 <= time.monotonic() - start < 1.0
    envelope = parse(text)
    assert envelope["status"] == "running"
    assert envelope["tool"] == "research"
    task_id = envelope["task_id"]
    assert uuid.UUID(task_id).version == 4
    assert isinstance(envelope.get("message"), str)

    await asyncio.sleep(0.1)  # well past the timeout: still running, never cancelled
    assert not cancelled
    running = parse(await tm.get_result(task_id, user_id="alice"))
    assert running["status"] == "running"

    release.set()
    done = parse(await tm.await_result(task_id, timeout=2, user_id="alice"))
    assert not cancelled
    assert done["status"] == "completed"
    assert done["result"] == {"report": "done"}
    assert parse(await tm.get_result(task_id))["result"] == {"report": "done"}
    rec = await tm.get_record(task_id)
    assert rec is not None
    assert (rec.name, rec.user_id) == ("research", "alice")


async def test_execute_uses_the_managers_timeout_by_default(
    make_manager: Callable[..., TaskManager],
) -> None:
    tm = make_manager(timeout=0.05)
    release = asyncio.Event()
    start = time.monotonic()
    envelope = parse(await tm.execute(blocked(release), "tool"))
    assert 0.04 <= time.monotonic() - start < 1.0
    assert envelope["status"] == "running"
    release.set()


async def test_execute_with_zero_timeout_backgrounds_at_once(tm: TaskManager) -> None:
    release = asyncio.Event()
    envelope = parse(await tm.execute(blocked(release), "tool", timeout=0))
    assert envelope["status"] == "running"
    release.set()
    done = parse(await tm.await_result(envelope["task_id"], timeout=2))
    assert done["status"] == "completed"


async def test_execute_returns_an_error_envelope_when_the_tool_raises(tm: TaskManager) -> None:
    envelope = parse(await tm.execute(fail("tool broke"), "search", timeout=1))
    assert envelope["status"] == "failed"
    assert envelope["error"] == {"type": "RuntimeError", "message": "tool broke"}
    assert envelope["tool"] == "search"
    rec = await tm.get_record(envelope["task_id"])
    assert rec is not None
    assert rec.status is TaskStatus.FAILED


async def test_execute_of_a_tool_stopped_before_the_timeout(tm: TaskManager) -> None:
    async def stop_running() -> None:
        await asyncio.sleep(0.01)
        for rec in (await tm.records(status="running")).records:
            await tm.stop_task(rec.task_id)

    stopper = asyncio.create_task(stop_running())
    envelope = parse(await tm.execute(forever(), "slow", timeout=2))
    await stopper
    assert envelope["status"] == "cancelled"
    assert envelope["error"]["type"] == "CancelledError"
    assert envelope["tool"] == "slow"


async def test_execute_of_a_tool_that_fails_later_reports_through_get_result(
    tm: TaskManager,
) -> None:
    release = asyncio.Event()

    async def fails_later() -> None:
        await release.wait()
        raise KeyError("missing")

    envelope = parse(await tm.execute(fails_later(), "tool", timeout=0.01))
    assert envelope["status"] == "running"
    release.set()
    final = parse(await tm.await_result(envelope["task_id"], timeout=2))
    assert final["status"] == "failed"
    assert final["error"]["type"] == "KeyError"
    assert "result" not in final


async def test_execute_in_the_foreground_simply_awaits(tm: TaskManager) -> None:
    async def slowish() -> dict[str, int]:
        await asyncio.sleep(0.05)
        return {"n": 1}

    # Longer than the timeout, but not backgrounded: awaited to the end.
    assert await tm.execute(slowish(), "tool", timeout=0.01, background=False) == '{"n":1}'
    assert await tm.execute(value("plain"), background=False) == "plain"


async def test_execute_in_the_foreground_returns_an_error_envelope(tm: TaskManager) -> None:
    envelope = parse(await tm.execute(fail("nope"), "search", background=False))
    assert envelope["status"] == "failed"
    assert envelope["error"] == {"type": "RuntimeError", "message": "nope"}
    assert envelope["tool"] == "search"


# -- get_result --------------------------------------------------------------------------------


async def test_get_result_while_running_has_progress_and_elapsed(tm: TaskManager) -> None:
    reported = asyncio.Event()

    async def working() -> None:
        report_progress(0.25, "reading sources")
        reported.set()
        await asyncio.Event().wait()

    task_id = await tm.create_task(working(), "chat", name="research")
    await reported.wait()
    await asyncio.sleep(0.02)
    envelope = parse(await tm.get_result(task_id))
    assert envelope["task_id"] == task_id
    assert envelope["status"] == "running"
    assert envelope["progress"] == 0.25
    assert envelope["progress_message"] == "reading sources"
    assert envelope["tool"] == "research"
    assert envelope["item_id"] == "chat"
    assert 0.01 <= envelope["elapsed"] < 5
    assert "result" not in envelope
    assert "error" not in envelope


async def test_get_result_of_a_completed_task(tm: TaskManager) -> None:
    task_id = await tm.create_task(value({"rows": [1, 2]}))
    await tm.wait(task_id, timeout=1)
    envelope = parse(await tm.get_result(task_id))
    assert envelope["task_id"] == task_id
    assert envelope["status"] == "completed"
    assert envelope["result"] == {"rows": [1, 2]}
    assert "error" not in envelope
    assert envelope["elapsed"] >= 0


async def test_get_result_of_a_failed_task(tm: TaskManager) -> None:
    task_id = await tm.create_task(fail("broken"))
    await tm.wait(task_id, timeout=1)
    envelope = parse(await tm.get_result(task_id))
    assert envelope["status"] == "failed"
    assert envelope["error"] == {"type": "RuntimeError", "message": "broken"}
    assert "result" not in envelope


async def test_get_result_of_a_cancelled_task(tm: TaskManager) -> None:
    started = asyncio.Event()
    task_id = await tm.create_task(forever(started))
    await started.wait()
    await tm.stop_task(task_id)
    envelope = parse(await tm.get_result(task_id))
    assert envelope["status"] == "cancelled"
    assert envelope["error"]["type"] == "CancelledError"


async def test_get_result_of_a_lost_task(peers: Peers) -> None:
    a = peers(heartbeat_interval=0.05, liveness_ttl=0.2)
    b = peers()
    await b.start()
    release = asyncio.Event()
    task_id = await a.create_task(blocked(release))
    assert a._housekeeping is not None
    a._housekeeping.cancel()  # A stops heartbeating
    await asyncio.sleep(0.3)
    await peers.store.reap(time.time())
    envelope = parse(await b.get_result(task_id))
    assert envelope["status"] == "lost"
    assert envelope["error"]["type"] == "TaskLost"
    release.set()


async def test_get_result_of_a_result_that_does_not_encode_is_a_clear_failure(
    tm: TaskManager,
) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque-thing"

    task_id = await tm.create_task(value(Opaque()))
    await tm.wait(task_id, timeout=1)
    envelope = parse(await tm.get_result(task_id))
    assert envelope["status"] == "failed"
    assert envelope["error"]["type"] == "ValueNotEncodable"
    assert "Opaque is not JSON-encodable" in envelope["error"]["message"]


async def test_unknown_and_other_users_tasks_look_exactly_alike(tm: TaskManager) -> None:
    task_id = await tm.create_task(value("secret"), user_id="alice")
    await tm.wait(task_id, timeout=1)
    unknown = str(uuid.uuid4())
    for method in ("get_result", "await_result"):
        call = getattr(tm, method)
        theirs = parse(await call(task_id, user_id="bob"))
        missing = parse(await call(unknown, user_id="bob"))
        assert theirs["task_id"] == task_id
        assert missing["task_id"] == unknown
        assert theirs["status"] == "not_found"
        assert "secret" not in json.dumps(theirs)
        theirs.pop("task_id")
        missing.pop("task_id")
        assert theirs == missing
    mine = parse(await tm.get_result(task_id, user_id="alice"))
    assert mine["result"] == "secret"
    # An empty user id means no user (as in the tool APIs this replaces).
    assert parse(await tm.get_result(task_id, user_id=""))["result"] == "secret"


@pytest.mark.parametrize(
    "garbage",
    [None, 123, 1.5, b"bytes-id", ["list"], "", "x" * 257, "has space", "brace{x}", "nl\n"],
)
async def test_garbage_task_ids_are_not_found_never_an_exception(
    tm: TaskManager, garbage: Any
) -> None:
    for text in (await tm.get_result(garbage), await tm.await_result(garbage, timeout=0.1)):
        envelope = parse(text)
        assert envelope["status"] == "not_found"
        assert isinstance(envelope["task_id"], str)


# -- await_result ------------------------------------------------------------------------------


async def test_await_result_waits_for_the_result(tm: TaskManager) -> None:
    release = asyncio.Event()
    task_id = await tm.create_task(blocked(release, ["a", "b"]), user_id="alice")
    waiter = asyncio.create_task(tm.await_result(task_id, timeout=2, user_id="alice"))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    release.set()
    envelope = parse(await waiter)
    assert envelope["status"] == "completed"
    assert envelope["result"] == ["a", "b"]


async def test_await_result_timing_out_returns_the_running_status(tm: TaskManager) -> None:
    release = asyncio.Event()
    task_id = await tm.create_task(blocked(release))
    start = time.monotonic()
    envelope = parse(await tm.await_result(task_id, timeout=0.05))
    assert 0.04 <= time.monotonic() - start < 1.0
    assert envelope["task_id"] == task_id
    assert envelope["status"] == "running"
    assert isinstance(envelope["note"], str)
    assert envelope["note"]
    assert "elapsed" in envelope
    assert "result" not in envelope
    zero = parse(await tm.await_result(task_id, timeout=0))
    assert zero["status"] == "running"
    release.set()
    assert parse(await tm.await_result(task_id, timeout=2))["status"] == "completed"


async def test_await_result_of_a_finished_task_answers_at_once(tm: TaskManager) -> None:
    task_id = await tm.create_task(value(3))
    await tm.wait(task_id, timeout=1)
    envelope = parse(await tm.await_result(task_id, timeout=0))
    assert envelope["status"] == "completed"
    assert envelope["result"] == 3
    assert "note" not in envelope


# -- list_tasks ----------------------------------------------------------------------------------


async def test_list_tasks(tm: TaskManager) -> None:
    release = asyncio.Event()
    done = await tm.create_task(value(1), "chat-1", user_id="alice", name="calc")
    running = await tm.create_task(blocked(release), "chat-2", user_id="alice", name="search")
    bobs = await tm.create_task(value(2), "chat-1", user_id="bob")
    await tm.wait(done, timeout=1)
    await tm.wait(bobs, timeout=1)

    listing = parse(await tm.list_tasks(user_id="alice"))
    assert listing["count"] == 2
    assert "cursor" not in listing
    tasks = {t["task_id"]: t for t in listing["tasks"]}
    assert set(tasks) == {done, running}
    assert [t["task_id"] for t in listing["tasks"]] == [running, done]  # newest first
    assert tasks[done]["status"] == "completed"
    assert tasks[done]["tool"] == "calc"
    assert tasks[running]["status"] == "running"
    assert tasks[running]["item_id"] == "chat-2"
    assert all("elapsed" in t for t in listing["tasks"])

    by_item = parse(await tm.list_tasks(item_id="chat-1"))
    assert {t["task_id"] for t in by_item["tasks"]} == {done, bobs}
    by_status = parse(await tm.list_tasks(status="running"))
    assert [t["task_id"] for t in by_status["tasks"]] == [running]
    everyone = parse(await tm.list_tasks(user_id=""))  # empty user id: no user filter
    assert everyone["count"] == 3
    nobody = parse(await tm.list_tasks(user_id="carol"))
    assert nobody == {"count": 0, "tasks": []}
    release.set()


async def test_list_tasks_is_bounded_and_gives_a_cursor(tm: TaskManager) -> None:
    ids = [await tm.create_task(value(i), "bulk") for i in range(105)]
    await tm.wait(ids[-1], timeout=1)
    listing = parse(await tm.list_tasks(item_id="bulk"))
    assert listing["count"] == 100
    assert [t["task_id"] for t in listing["tasks"]] == ids[::-1][:100]
    assert isinstance(listing["cursor"], str)
    rest = await tm.records(item_id="bulk", cursor=listing["cursor"])
    assert [r.task_id for r in rest.records] == ids[::-1][100:]
