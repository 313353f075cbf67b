"""How long and how many finished tasks a manager keeps (memory store)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from helpers import blocked, memory_sizes, value
from taskward import Retention, TaskManager, TaskNotFound, TaskStatus, emit
from taskward.stores.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import Callable


async def noop() -> None:
    return None


def memory_store(tm: TaskManager) -> MemoryStore:
    store = tm._store
    assert isinstance(store, MemoryStore)
    return store


def test_the_managers_retention_settings(make_manager: Callable[..., TaskManager]) -> None:
    tm = make_manager(result_ttl=12.5, max_finished=7, max_output=3)
    assert tm.retention == Retention(result_ttl=12.5, max_finished=7, max_output=3)
    assert make_manager().retention == Retention()


# -- result_ttl ----------------------------------------------------------------------------------


async def test_finished_records_expire_after_result_ttl(
    make_manager: Callable[..., TaskManager],
) -> None:
    tm = make_manager(result_ttl=0.2)

    async def talk() -> str:
        emit("words")
        return "said"

    old = await tm.create_task(talk(), "chat", user_id="alice")
    await tm.wait(old, timeout=1)
    assert (await tm.get_record(old)) is not None
    await asyncio.sleep(0.3)
    # Activity after the TTL (another task finishing) must not bring it back.
    fresh = await tm.create_task(value(2), "chat", user_id="alice")
    await tm.wait(fresh, timeout=1)
    await tm.records(limit=1)  # its write is flushed

    assert await tm.get_record(old) is None
    with pytest.raises(TaskNotFound):
        await tm.wait(old, timeout=0.1)
    with pytest.raises(TaskNotFound):
        await tm.read_output(old)
    assert [r.task_id for r in (await tm.records()).records] == [fresh]
    assert [r.task_id for r in (await tm.records(user_id="alice")).records] == [fresh]
    assert [r.task_id for r in (await tm.records(item_id="chat")).records] == [fresh]
    assert [r.task_id for r in (await tm.records(status="completed")).records] == [fresh]
    assert '"not_found"' in await tm.get_result(old)
    store = memory_store(tm)
    assert old not in store
    assert old not in store._outputs


async def test_finished_records_expire_on_an_idle_manager(
    make_manager: Callable[..., TaskManager],
) -> None:
    """Nothing else happening after the TTL: the record is gone all the same."""
    tm = make_manager(result_ttl=0.2)
    task_id = await tm.create_task(value(1), user_id="alice")
    await tm.wait(task_id, timeout=1)
    assert await tm.result(task_id) == 1
    await asyncio.sleep(0.3)
    with pytest.raises(TaskNotFound):  # the first read after the TTL: no outcome either
        await tm.result(task_id)
    assert await tm.get_record(task_id) is None
    assert (await tm.records(user_id="alice")).records == []
    assert '"not_found"' in await tm.get_result(task_id)


async def test_running_tasks_do_not_expire(make_manager: Callable[..., TaskManager]) -> None:
    tm = make_manager(result_ttl=0.1)
    release = asyncio.Event()
    task_id = await tm.create_task(blocked(release))
    await asyncio.sleep(0.2)
    for i in range(5):  # writes that would trigger eviction
        await tm.wait(await tm.create_task(value(i)), timeout=1)
    rec = await tm.get_record(task_id)
    assert rec is not None
    assert rec.status is TaskStatus.RUNNING
    release.set()
    final = await tm.wait(task_id, timeout=1)
    assert final.result == "released"  # the TTL counts from the finish, not the creation
    assert await tm.get_record(task_id) is not None


# -- max_finished ------------------------------------------------------------------------------


async def test_max_finished_keeps_the_newest(make_manager: Callable[..., TaskManager]) -> None:
    tm = make_manager(max_finished=5)
    ids = []
    for i in range(12):
        ids.append(await tm.create_task(value(i), f"item-{i % 3}", user_id=f"user-{i % 2}"))
        await tm.wait(ids[-1], timeout=1)
    await tm.records(limit=1)
    assert [r.task_id for r in (await tm.records()).records] == ids[::-1][:5]
    for task_id in ids[:7]:
        assert await tm.get_record(task_id) is None
    for task_id in ids[7:]:
        assert await tm.get_record(task_id) is not None
    sizes = memory_sizes(memory_store(tm))
    for name in ("records", "order", "positions", "finished", "all", "by_status", "by_user"):
        assert sizes[name] == 5, name
    assert sizes["by_item"] == 5


async def test_max_finished_holds_under_200_000_tasks(
    make_manager: Callable[..., TaskManager],
) -> None:
    # asyncio's debug mode records a traceback per scheduled callback: 200k tasks
    # would take minutes. This test is about memory, so it runs without it.
    asyncio.get_running_loop().set_debug(False)
    tm = make_manager(max_finished=1000)
    store = memory_store(tm)
    last: list[str] = []
    for batch in range(200):
        last = [
            await tm.create_task(noop(), f"item-{batch}-{i % 10}", user_id=f"user-{i % 50}")
            for i in range(1000)
        ]
        await tm.wait(last[-1], timeout=5)
        if batch % 50 == 0:
            assert memory_sizes(store)["records"] <= 1000 + 1000  # never more than a batch over
    await tm.records(limit=1)  # everything flushed

    sizes = memory_sizes(store)
    assert 900 <= sizes["records"] <= 1000
    for name in ("order", "positions", "finished", "all", "by_status", "by_user", "by_item"):
        assert sizes[name] <= 1000, name
    assert sizes["stops"] == 0
    # An index's list keeps departed entries until they are as many as the rest.
    slack = 64
    assert sizes["all_held"] <= 2 * sizes["all"] + slack
    assert sizes["by_status_held"] <= 2 * sizes["by_status"] + 5 * slack
    assert sizes["by_user_held"] <= 2 * sizes["by_user"] + sizes["user_keys"] * slack
    assert sizes["by_item_held"] <= 2 * sizes["by_item"] + sizes["item_keys"] * slack
    assert sizes["outputs"] == 0
    assert sizes["item_keys"] <= 100  # keys of items with nothing left are dropped
    assert sizes["user_keys"] <= 50
    assert len(tm._table.rows) == 0
    for task_id in last[-900:]:  # the newest are the ones kept
        assert task_id in store


async def test_evicted_output_streams_are_dropped(make_manager: Callable[..., TaskManager]) -> None:
    tm = make_manager(max_finished=10)

    async def talk(i: int) -> None:
        emit(f"line {i}")

    for i in range(50):
        await tm.wait(await tm.create_task(talk(i)), timeout=1)
    await tm.records(limit=1)
    store = memory_store(tm)
    assert len(store._outputs) == 10
    assert all(task_id in store for task_id in store._outputs)


async def test_running_tasks_are_never_evicted(make_manager: Callable[..., TaskManager]) -> None:
    tm = make_manager(max_finished=10)
    release = asyncio.Event()
    running = [await tm.create_task(blocked(release), "long") for _ in range(3)]
    for i in range(100):
        await tm.wait(await tm.create_task(value(i), "short"), timeout=1)
    await tm.records(limit=1)
    for task_id in running:
        rec = await tm.get_record(task_id)
        assert rec is not None
        assert rec.status is TaskStatus.RUNNING
    assert await tm.list_task_ids_by_item_id("long") == running
    assert len(memory_store(tm)) == 13
    release.set()
    for task_id in running:
        assert (await tm.wait(task_id, timeout=1)).result == "released"


async def test_retention_of_a_store_passed_in(make_manager: Callable[..., TaskManager]) -> None:
    store = MemoryStore(Retention(max_finished=3))
    tm = make_manager(store=store)
    assert tm.retention.max_finished == 3
    for i in range(6):
        await tm.wait(await tm.create_task(value(i)), timeout=1)
    await tm.records(limit=1)
    assert len(store) == 3
