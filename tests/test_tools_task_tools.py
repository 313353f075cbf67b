"""The task tools a model calls: check_task, list_tasks, stop_task, scoped to the caller."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, get_args

import pytest

from helpers import forever
from taskward import Caller, TaskManager, TaskStatus, report_progress
from taskward.tools import ToolContext, ToolRegistry, task_tools
from taskward.tools import envelopes as env
from taskward.tools.task_tools import MAX_CHECK_WAIT, StatusName

if TYPE_CHECKING:
    from collections.abc import Callable

ANA, BO = Caller("ana"), Caller("bo")


@pytest.fixture
def manager_defaults(manager_defaults: dict[str, Any]) -> dict[str, Any]:
    return {**manager_defaults, "timeout": 0.1, "stop_timeout": 1.0}


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry()


def parse(text: str) -> dict[str, Any]:
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


async def slow_report(release: asyncio.Event) -> str:
    report_progress(0.25, "reading sources")
    await release.wait()
    return "the report"


async def test_check_task_while_running_then_done(tm: TaskManager, registry: ToolRegistry) -> None:
    release = asyncio.Event()
    ctx = ToolContext(tm, ANA)
    task_id = await tm.create_task(slow_report(release), caller=ANA, name="report")
    await asyncio.sleep(0.01)
    running = parse(await registry.call("check_task", {"task_id": task_id}, ctx))
    assert running["status"] == "running" and running["tool"] == "report"
    assert (running["progress"], running["progress_message"]) == (0.25, "reading sources")
    assert running["poll_after_s"] == 1
    assert "result" not in running
    release.set()
    done = parse(await registry.call("check_task", {"task_id": task_id, "wait": 5}, ctx))
    assert done["status"] == "completed" and done["result"] == "the report"
    assert "poll_after_s" not in done


async def test_check_task_wait_times_out_with_a_note(
    tm: TaskManager, registry: ToolRegistry
) -> None:
    task_id = await tm.create_task(forever(), caller=ANA)
    started = time.monotonic()
    out = parse(
        await registry.call("check_task", {"task_id": task_id, "wait": 0.2}, ToolContext(tm, ANA))
    )
    assert time.monotonic() - started >= 0.2
    assert out["status"] == "running" and out["note"] == "still running after waiting 0.2s"


async def test_check_task_caps_the_wait(
    tm: TaskManager, registry: ToolRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait of an hour is cut to MAX_CHECK_WAIT (30 s; shortened here), and the note says so."""
    assert MAX_CHECK_WAIT == 30.0
    monkeypatch.setattr(task_tools, "MAX_CHECK_WAIT", 0.2)
    task_id = await tm.create_task(forever(), caller=ANA)
    started = time.monotonic()
    out = parse(
        await registry.call("check_task", {"task_id": task_id, "wait": 3600}, ToolContext(tm, ANA))
    )
    assert 0.2 <= time.monotonic() - started < 5
    assert out["status"] == "running" and out["note"] == "still running after waiting 0.2s"


async def test_another_users_task_answers_like_a_missing_one(
    tm: TaskManager, registry: ToolRegistry
) -> None:
    task_id = await tm.create_task(forever(), caller=ANA)
    as_bo = ToolContext(tm, BO)
    missing = "00000000-0000-4000-8000-000000000000"
    for name, args in (
        ("check_task", {"task_id": task_id}),
        ("check_task", {"task_id": task_id, "wait": 0.05}),
    ):
        theirs = parse(await registry.call(name, args, as_bo))
        nothing = parse(await registry.call(name, {**args, "task_id": missing}, as_bo))
        assert theirs == {**nothing, "task_id": task_id}
        assert theirs["status"] == "not_found"
    stop_theirs = parse(await registry.call("stop_task", {"task_id": task_id}, as_bo))
    stop_nothing = parse(await registry.call("stop_task", {"task_id": missing}, as_bo))
    assert stop_theirs == {**stop_nothing, "task_id": task_id}
    assert stop_theirs["outcome"] == "not_found"
    assert (await tm.get_record(task_id, caller=ANA)).status is TaskStatus.RUNNING  # type: ignore[union-attr]
    listed = parse(await registry.call("list_tasks", {}, as_bo))
    assert listed == {"count": 0, "tasks": []}


async def test_an_admin_sees_every_task(tm: TaskManager, registry: ToolRegistry) -> None:
    task_id = await tm.create_task(forever(), caller=ANA)
    admin = ToolContext(tm, Caller("root", admin=True))
    assert parse(await registry.call("check_task", {"task_id": task_id}, admin))["status"] == (
        "running"
    )
    assert parse(await registry.call("list_tasks", "", admin))["count"] == 1


@pytest.mark.parametrize("garbage", ["", "has space", "x" * 300, "a:b"])
async def test_garbage_ids_are_not_found(
    tm: TaskManager, registry: ToolRegistry, garbage: str
) -> None:
    ctx = ToolContext(tm, ANA)
    out = parse(await registry.call("check_task", {"task_id": garbage}, ctx))
    assert out == json.loads(env.not_found_envelope(garbage))
    stop = parse(await registry.call("stop_task", {"task_id": garbage}, ctx))
    assert stop["outcome"] == "not_found" and stop["status"] == "not_found"


async def test_stop_task_answers_the_confirmed_outcome(
    tm: TaskManager, registry: ToolRegistry
) -> None:
    ctx = ToolContext(tm, ANA)
    task_id = await tm.create_task(forever(), caller=ANA)
    stopped = parse(await registry.call("stop_task", {"task_id": task_id}, ctx))
    assert stopped == {
        "task_id": task_id,
        "outcome": "cancelled",
        "status": "cancelled",
        "message": "The task was stopped.",
    }
    again = parse(await registry.call("stop_task", {"task_id": task_id}, ctx))
    assert (again["outcome"], again["status"]) == ("already_finished", "cancelled")


async def test_list_tasks_filters_limits_and_hints(tm: TaskManager, registry: ToolRegistry) -> None:
    ctx = ToolContext(tm, ANA)
    running = [await tm.create_task(forever(), caller=ANA, name="wait") for _ in range(3)]
    done = await tm.create_task(asyncio.sleep(0, "ok"), caller=ANA, name="quick")
    await tm.wait(done, 5)
    everything = parse(await registry.call("list_tasks", {}, ctx))
    assert everything["count"] == 4 and everything["poll_after_s"] == 1
    assert {t["task_id"] for t in everything["tasks"]} == {*running, done}
    only_done = parse(await registry.call("list_tasks", {"status": "completed"}, ctx))
    assert [t["task_id"] for t in only_done["tasks"]] == [done]
    assert "poll_after_s" not in only_done
    two = parse(await registry.call("list_tasks", {"limit": 2, "status": None}, ctx))
    assert two["count"] == 2
    default = parse(await registry.call("list_tasks", {"limit": None}, ctx))
    assert default["count"] == 4
    bad = parse(await registry.call("list_tasks", {"status": "sleeping", "limit": 0}, ctx))
    assert {f["field"] for f in bad["error"]["fields"]} == {"status", "limit"}


def test_the_status_names_are_the_task_statuses() -> None:
    assert set(get_args(StatusName)) == {s.value for s in TaskStatus}


@pytest.mark.parametrize(
    ("elapsed", "expected"), [(0.0, 1), (1.5, 1), (2.5, 2), (10, 5), (59.2, 30), (3600, 30)]
)
def test_poll_after_grows_with_the_tasks_age(elapsed: float, expected: int) -> None:
    assert env.poll_after(elapsed) == expected


async def test_a_pending_stop_says_when_to_look_again(
    make_manager: Callable[..., TaskManager], registry: ToolRegistry
) -> None:
    """A task that swallows its cancellation for longer than stop_timeout."""
    tm = make_manager(stop_timeout=0.1, shutdown_timeout=0.5)
    release = asyncio.Event()

    async def stubborn() -> str:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                await asyncio.sleep(0.3)
                return "ignored the stop"
        return "released"

    task_id = await tm.create_task(stubborn(), caller=ANA)
    await asyncio.sleep(0.01)
    out = parse(await registry.call("stop_task", {"task_id": task_id}, ToolContext(tm, ANA)))
    assert out["outcome"] == "pending" and out["poll_after_s"] == 1
    assert "check_task" in out["message"]
    await tm.wait(task_id, 5)
