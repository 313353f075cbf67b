"""MemoryStore on its own: writes, reads, paging, retention, stops, liveness."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from typing import Any

import pytest

from helpers import batch, memory_indexes, memory_sizes
from taskward import OutputChunk, Retention, TaskError, TaskRecord, TaskStatus
from taskward.stores.memory import MemoryStore

RUNNING = TaskStatus.RUNNING
COMPLETED = TaskStatus.COMPLETED
#: Records in a "many at once" write: what one flush of a busy loop turn hands over.
MANY = 40


def make_record(
    status: TaskStatus = RUNNING,
    *,
    user_id: str | None = None,
    item_id: str | None = None,
    instance_id: str = "inst-1",
    finished_at: float | None = None,
    task_id: str | None = None,
) -> TaskRecord:
    now = time.time()
    terminal = status is not RUNNING
    return TaskRecord(
        task_id or str(uuid.uuid4()),
        status,
        user_id=user_id,
        item_id=item_id,
        instance_id=instance_id,
        created_at=now,
        started_at=now,
        updated_at=now,
        finished_at=(finished_at if finished_at is not None else now) if terminal else None,
        result="r" if status is COMPLETED else None,
    )


def finish(rec: TaskRecord, status: TaskStatus = COMPLETED, at: float | None = None) -> None:
    rec.status = status
    rec.finished_at = rec.updated_at = time.time() if at is None else at
    if status is COMPLETED:
        rec.result = "done"


async def save(store: MemoryStore, *records: TaskRecord, now: float | None = None) -> None:
    await store.save(batch(list(records), {}, time.time() if now is None else now))


def chunks(first: int, last: int) -> list[OutputChunk]:
    return [OutputChunk(seq, f"c{seq}", float(seq)) for seq in range(first, last + 1)]


async def all_pages(store: MemoryStore, limit: int, **filters: object) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page = await store.query(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        pages.append([r.task_id for r in page.records])
        cursor = page.cursor
        if cursor is None:
            return pages


async def listed(store: MemoryStore, limit: int) -> list[str]:
    """Every task id, newest first, read page by page."""
    return [task_id for page in await all_pages(store, limit) for task_id in page]


# -- writes and reads -------------------------------------------------------------------------


async def test_many_finished_tasks_in_one_write_are_indexed_like_one_by_one() -> None:
    """Tasks that started and ended between two writes arrive together, terminal and
    new: listed in creation order, by user, item and status, and evicted oldest first."""
    store = MemoryStore(Retention(max_finished=MANY + 3))
    records = [
        make_record(COMPLETED, user_id="alice", item_id="chat"),
        make_record(TaskStatus.FAILED),
        make_record(COMPLETED, item_id="chat"),
    ] + [make_record(COMPLETED) for _ in range(MANY)]
    await save(store, *records)
    ids = [rec.task_id for rec in records]
    assert await listed(store, 10) == ids[::-1]
    assert [r.task_id for r in (await store.query(user_id="alice")).records] == ids[:1]
    assert [r.task_id for r in (await store.query(item_id="chat")).records] == [ids[2], ids[0]]
    assert [r.task_id for r in (await store.query(status=TaskStatus.FAILED)).records] == [ids[1]]
    later = [make_record(COMPLETED) for _ in range(MANY)]
    await save(store, *later)
    for task_id in ids[:MANY]:
        assert await store.get(task_id) is None
        assert_forgotten(store, task_id)
    assert (await store.query(user_id="alice")).records == []
    assert len(store) == MANY + 3
    assert await listed(store, 50) == [r.task_id for r in later[::-1]] + ids[MANY:][::-1]


async def test_a_task_twice_in_one_write_is_kept_once_as_first_written() -> None:
    store = MemoryStore(Retention(max_finished=MANY + 1))
    first = make_record(COMPLETED, task_id="t-1")
    second = make_record(TaskStatus.FAILED, task_id="t-1")
    others = [make_record(COMPLETED) for _ in range(MANY)]
    await save(store, first, *others, second)
    got = await store.get("t-1")
    assert got is not None
    assert got.status is COMPLETED
    assert len(store) == MANY + 1
    await save(store, make_record(COMPLETED))  # evicting it must not trip over a second entry
    assert await store.get("t-1") is None
    assert all([await store.get(rec.task_id) is not None for rec in others])


# -- query ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cursor", ["abc", "-1", "", "1.5", " 1", "9" * 30])
async def test_query_refuses_a_malformed_cursor(cursor: str) -> None:
    store = MemoryStore()
    await save(store, make_record())
    with pytest.raises(ValueError, match="cursor"):
        await store.query(cursor=cursor)


class Reads:
    count = 0


class CountingList(list[int]):
    """An index's positions, counting the entries read from them (bisection included)."""

    def __getitem__(self, key: Any) -> Any:
        Reads.count += 1
        return super().__getitem__(key)


async def test_a_page_reads_about_as_many_entries_as_it_lists() -> None:
    """From the top or from a cursor deep down, by any filter: no entries skipped one by one."""
    store = MemoryStore(Retention(max_finished=20_000))
    records = [
        make_record(COMPLETED if i % 4 else RUNNING, user_id=f"u{i % 3}", item_id=f"i{i // 10}")
        for i in range(20_000)
    ]
    await save(store, *records)
    deep = await store.query(limit=15_000)
    assert deep.cursor is not None
    indexes = [store._all, *store._by_status.values(), *store._by_user.values()]
    for index in indexes:
        index.positions = CountingList(index.positions)
    bisection = 2 * (20_000).bit_length()
    for filters in ({}, {"user_id": "u1"}, {"status": COMPLETED}, {"status": RUNNING}):
        for cursor in (None, deep.cursor):
            Reads.count = 0
            page = await store.query(limit=10, cursor=cursor, **filters)
            assert len(page.records) == 10
            assert Reads.count <= 11 + bisection, (filters, cursor, Reads.count)
    Reads.count = 0
    page = await store.query(limit=10, user_id="u1", status=RUNNING)  # a quarter of u1's match
    assert len(page.records) == 10
    assert Reads.count <= 45


async def test_departed_index_entries_are_dropped_once_they_outnumber_the_rest() -> None:
    store = MemoryStore()
    records = [make_record(user_id="u", item_id="i") for _ in range(300)]
    await save(store, *records)
    for rec in records[:250]:
        finish(rec)
    await save(store, *records[:250])
    sizes = memory_sizes(store)
    assert sizes["by_status"] == 300
    assert sizes["by_status_held"] <= 2 * 300 + 5 * 64  # the running index was rebuilt
    assert len(store._by_status["running"].positions) <= 2 * 50 + 64
    running = [rec.task_id for rec in records[250:]]
    assert [r.task_id for r in (await store.query(status=RUNNING, limit=100)).records] == (
        running[::-1]
    )
    assert await store.running_ids_by_item("i") == running
    assert await store.counts() == {
        RUNNING: 50,
        COMPLETED: 250,
        TaskStatus.FAILED: 0,
        TaskStatus.CANCELLED: 0,
        TaskStatus.LOST: 0,
    }


async def test_an_index_emptied_by_eviction_goes() -> None:
    store = MemoryStore(Retention(max_finished=1))
    await save(store, make_record(COMPLETED, user_id="once", item_id="chat"))
    await save(store, make_record(COMPLETED))
    assert "once" not in memory_indexes(store)["user"]
    assert "chat" not in memory_indexes(store)["item"]


# -- output ---------------------------------------------------------------------------------


async def test_output_of_an_unknown_task_is_not_kept() -> None:
    store = MemoryStore()
    stray = str(uuid.uuid4())
    await store.save(batch([], {stray: chunks(1, 2)}, time.time()))
    assert await store.read_output(stray) == []
    assert store._outputs == {}


# -- retention ------------------------------------------------------------------------------


def assert_forgotten(store: MemoryStore, task_id: str) -> None:
    assert task_id not in store
    assert task_id not in store._order
    assert task_id not in store._at.values()
    assert task_id not in store._outputs
    for indexes in memory_indexes(store).values():
        assert all(task_id not in ids for ids in indexes.values())
    assert all(task_id not in ids for ids in store._stops.values())
    assert task_id not in store._finished


async def test_many_over_max_finished_drop_the_oldest_with_their_output() -> None:
    store = MemoryStore(Retention(max_finished=MANY))
    old = [make_record(COMPLETED) for _ in range(MANY)]
    await store.save(batch(old, {rec.task_id: chunks(1, 2) for rec in old}, time.time()))
    new = [make_record(COMPLETED) for _ in range(MANY)]
    await save(store, *new)
    for rec in old:
        assert_forgotten(store, rec.task_id)
    assert [await store.get(rec.task_id) is not None for rec in new] == [True] * MANY
    assert len(store) == MANY


async def test_max_finished_drops_the_oldest_finished_with_everything_they_had() -> None:
    store = MemoryStore(Retention(max_finished=2))
    running = make_record(user_id="u", item_id="i")
    await save(store, running)
    done = []
    for n in range(5):
        rec = make_record(user_id="u", item_id=f"item-{n}")
        await store.save(batch([rec], {rec.task_id: chunks(1, 1)}, time.time()))
        finish(rec)
        await save(store, rec)
        done.append(rec)
    for rec in done[:3]:
        assert await store.get(rec.task_id) is None
        assert_forgotten(store, rec.task_id)
    for rec in done[3:]:
        assert await store.get(rec.task_id) is not None
        assert len(await store.read_output(rec.task_id)) == 1
    assert await store.get(running.task_id) is not None  # running: never evicted
    assert set(memory_indexes(store)["item"]) == {"i", "item-3", "item-4"}
    assert len(store._finished) == 2


async def test_result_ttl_drops_finished_records_by_their_finish_time() -> None:
    store = MemoryStore(Retention(result_ttl=10))
    t0 = time.time()
    old = make_record(COMPLETED, user_id="u", finished_at=t0 - 11)
    recent = make_record(COMPLETED, user_id="u", finished_at=t0 - 5)
    running = make_record(user_id="u")
    running.created_at = t0 - 1000
    await save(store, old, recent, running, now=t0)
    assert await store.get(old.task_id) is None
    assert_forgotten(store, old.task_id)
    assert await store.get(recent.task_id) is not None
    await save(store, make_record(COMPLETED), now=t0 + 6)
    assert await store.get(recent.task_id) is None
    assert await store.get(running.task_id) is not None
    assert [r.task_id for r in (await store.query(user_id="u")).records] == [running.task_id]


# -- liveness -------------------------------------------------------------------------------


async def test_reaped_records_count_towards_max_finished() -> None:
    store = MemoryStore(Retention(max_finished=1))
    a, b = make_record(instance_id="dead"), make_record(instance_id="dead")
    await save(store, a, b)
    await store.heartbeat("dead", 0.01)
    await asyncio.sleep(0.05)
    assert len(await store.reap(time.time())) == 2
    assert len(store) == 1
    assert await store.get(b.task_id) is not None


# -- kept terminal records ------------------------------------------------------------------


async def test_terminal_records_of_plain_values_are_invisible_to_the_garbage_collector() -> None:
    """A kept result costs a full collection nothing: no object per record to walk."""
    store = MemoryStore()
    running = [make_record() for _ in range(50)]
    await store.save(batch(running, now=time.time()))
    for rec in running:
        finish(rec)
    await store.save(batch(running, now=time.time()))
    gc.collect()
    tracked = {id(o) for o in gc.get_objects()}
    kept = [store._done[rec.task_id] for rec in running]
    assert not any(id(packed) in tracked for packed in kept)
    # ... and every field survives the packing.
    for rec in running:
        assert await store.get(rec.task_id) == rec


async def test_terminal_records_keep_errors_metadata_and_rich_results() -> None:
    rec = make_record()
    rec.metadata = {"tool": "search", "args": {"q": "x"}}
    store = MemoryStore()
    await store.save(batch([rec], now=time.time()))
    finish(rec, TaskStatus.FAILED)
    rec.error = TaskError("ValueError", "bad input")
    rec.result = {"partial": [1, 2]}
    rec.progress, rec.progress_message = 0.5, "half"
    await store.save(batch([rec], now=time.time()))
    first = await store.get(rec.task_id)
    assert first == rec
    assert first is not None
    first.metadata["tool"] = "changed"  # type: ignore[index]
    again = await store.get(rec.task_id)
    assert again == rec  # a read gets its own copy of what is kept
    page = await store.query(status=TaskStatus.FAILED)
    assert page.records == [rec]
