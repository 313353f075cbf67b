"""Caller scope: a caller that is not an admin sees only its own tasks, and another
user's task answers exactly like a missing one, on every read, wait, listing,
output read and stop; an admin sees every task. And the store given as a URL."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest

from helpers import blocked, value
from taskward import Caller, StopOutcome, TaskManager, TaskNotFound, TaskStatus, emit

if TYPE_CHECKING:
    from collections.abc import Callable

ANA = Caller("ana")
BOB = Caller("bob")
ADMIN = Caller("ops", admin=True)


async def talk(release: asyncio.Event) -> str:
    emit("hello")
    await release.wait()
    return "done"


def test_a_caller_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="user_id"):
        Caller("")
    with pytest.raises(ValueError, match="not allowed"):
        Caller("a b")
    with pytest.raises(TypeError, match="admin"):
        Caller("ana", admin=1)  # type: ignore[arg-type]
    assert ANA.sees == "ana"
    assert ADMIN.sees is None


async def test_another_users_task_looks_exactly_like_a_missing_one(tm: TaskManager) -> None:
    release = asyncio.Event()
    task_id = await tm.create_task(talk(release), "chat-1", caller=ANA)
    missing = str(uuid.uuid4())
    await asyncio.sleep(0)
    for unknown in (task_id, missing):  # bob's view of ana's task, and of nothing
        assert await tm.get_record(unknown, caller=BOB) is None
        with pytest.raises(TaskNotFound):
            await tm.wait(unknown, timeout=0.1, caller=BOB)
        with pytest.raises(TaskNotFound):
            await tm.result(unknown, caller=BOB)
        with pytest.raises(TaskNotFound):
            await tm.read_output(unknown, caller=BOB)
        assert (await tm.stop_task(unknown, caller=BOB)).outcome is StopOutcome.NOT_FOUND
    assert (await tm.records(caller=BOB)).records == []
    assert (await tm.records(caller=BOB, user_id="ana")).records == []
    assert await tm.list_task_ids_by_item_id("chat-1", caller=BOB) == []
    assert await tm.stop_item_tasks("chat-1", caller=BOB) == []
    # Nothing bob did touched it.
    rec = await tm.get_record(task_id, caller=ANA)
    assert rec is not None and rec.status is TaskStatus.RUNNING and rec.user_id == "ana"
    assert [c.data for c in await tm.read_output(task_id, caller=ANA)] == ["hello"]
    release.set()
    assert await tm.result(task_id, caller=ANA) == "done"


async def test_an_admin_sees_and_stops_every_task(tm: TaskManager) -> None:
    release = asyncio.Event()
    mine = await tm.create_task(blocked(release), "chat-1", caller=ANA)
    theirs = await tm.create_task(blocked(release), "chat-1", caller=BOB)
    listed = await tm.records(caller=ADMIN)
    assert {r.task_id for r in listed.records} == {mine, theirs}
    only_bob = await tm.records(caller=ADMIN, user_id="bob")
    assert [r.task_id for r in only_bob.records] == [theirs]
    assert sorted(await tm.list_task_ids_by_item_id("chat-1", caller=ADMIN)) == sorted(
        [mine, theirs]
    )
    assert sorted(await tm.list_task_ids_by_item_id("chat-1", caller=ANA)) == [mine]
    results = await tm.stop_item_tasks("chat-1", caller=ADMIN)
    assert {r.task_id: r.outcome for r in results} == {
        mine: StopOutcome.CANCELLED,
        theirs: StopOutcome.CANCELLED,
    }


async def test_a_caller_owns_what_it_creates_and_sees_its_events(tm: TaskManager) -> None:
    async with tm.events(caller=BOB, kinds=["finished"]) as bobs:
        ana_task = await tm.create_task(value(1), caller=ANA)
        bob_task = await tm.create_task(value(2), caller=BOB)
        event = await asyncio.wait_for(anext(aiter(bobs)), timeout=2)
    assert event.task_id == bob_task
    assert (await tm.wait(ana_task, caller=ADMIN)).user_id == "ana"


async def test_caller_and_user_id_together_are_refused(tm: TaskManager) -> None:
    task_id = await tm.create_task(value(1), caller=ANA)
    with pytest.raises(ValueError, match="not both"):
        await tm.get_record(task_id, "ana", caller=ANA)
    with pytest.raises(ValueError, match="not both"):
        await tm.create_task(value(1), user_id="ana", caller=ANA)
    with pytest.raises(TypeError, match="Caller"):
        await tm.stop_task(task_id, caller="ana")  # type: ignore[arg-type]


async def test_the_store_given_as_a_url(
    make_manager: Callable[..., TaskManager], redis_url: str, key_prefix: str
) -> None:
    memory = make_manager(store="memory://")
    assert await memory.result(await memory.create_task(value("here"))) == "here"
    a = make_manager(store=redis_url, prefix=key_prefix)
    b = make_manager(store=redis_url, prefix=key_prefix)
    task_id = await a.create_task(value({"from": "a"}), caller=ANA)
    assert await b.result(task_id, timeout=5, caller=ANA) == {"from": "a"}
    assert await b.get_record(task_id, caller=BOB) is None


def test_a_store_url_of_an_unknown_scheme_names_the_schemes() -> None:
    with pytest.raises(ValueError, match=r"memory://, redis://"):
        TaskManager(store="postgres://localhost/db")
    with pytest.raises(ValueError, match="not both"):
        TaskManager(redis="redis://localhost", store="memory://")


async def test_instances_and_counts_through_the_manager(
    make_manager: Callable[..., TaskManager], redis_url: str, key_prefix: str
) -> None:
    a = make_manager(store=redis_url, prefix=key_prefix, instance_id="inst-a")
    b = make_manager(store=redis_url, prefix=key_prefix, instance_id="inst-b")
    release = asyncio.Event()
    running = await a.create_task(blocked(release), caller=ANA)
    await a.result(await a.create_task(value(1), caller=ANA))
    counts = await b.counts()
    assert counts[TaskStatus.RUNNING] == 1 and counts[TaskStatus.COMPLETED] == 1
    assert set(counts) == set(TaskStatus)
    seen = {i.instance_id: i for i in await b.instances()}
    assert seen["inst-a"].alive and seen["inst-a"].running == 1
    assert seen["inst-b"].alive and seen["inst-b"].running == 0
    release.set()
    await b.wait(running, timeout=5)
