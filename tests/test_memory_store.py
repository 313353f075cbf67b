"""MemoryStore on its own: writes, reads, paging, retention, stops, liveness."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid

import pytest

from helpers import batch, lives, memory_indexes
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


async def test_start_and_aclose_are_harmless() -> None:
    store = MemoryStore()
    await store.start()
    await store.aclose()
    await store.aclose()
    assert store.retention == Retention()


async def test_save_then_get_returns_a_copy() -> None:
    store = MemoryStore()
    rec = make_record(user_id="u", item_id="i")
    await save(store, rec)
    got = await store.get(rec.task_id)
    assert got is not None
    assert got is not rec
    assert got == rec
    got.status = TaskStatus.FAILED
    again = await store.get(rec.task_id)
    assert again is not None
    assert again.status is RUNNING
    assert await store.get(str(uuid.uuid4())) is None


async def test_get_many_keeps_the_order_asked() -> None:
    store = MemoryStore()
    a, b = make_record(), make_record()
    await save(store, a, b)
    missing = str(uuid.uuid4())
    got = await store.get_many([b.task_id, missing, a.task_id])
    assert [None if r is None else r.task_id for r in got] == [b.task_id, None, a.task_id]
    assert await store.get_many([]) == []


async def test_save_of_a_new_object_for_a_known_id_upserts() -> None:
    """`save` upserts by task id: what matters is the record's content, not its identity."""
    store = MemoryStore()
    rec = make_record(user_id="u")
    await save(store, rec)
    update = rec.copy()
    update.progress = 0.5
    update.progress_message = "half"
    await save(store, update)
    got = await store.get(rec.task_id)
    assert got is not None
    assert (got.progress, got.progress_message) == (0.5, "half")

    final = update.copy()
    finish(final)
    await save(store, final)
    got = await store.get(rec.task_id)
    assert got is not None
    assert got.status is COMPLETED
    assert got.result == "done"
    assert [r.task_id for r in (await store.query(status=COMPLETED)).records] == [rec.task_id]
    assert (await store.query(status=RUNNING)).records == []


async def test_a_terminal_record_is_never_overwritten() -> None:
    store = MemoryStore()
    rec = make_record(COMPLETED)
    await save(store, rec)
    stale = rec.copy()
    stale.status = RUNNING
    stale.finished_at = None
    await save(store, stale)
    other = rec.copy()
    other.status = TaskStatus.FAILED
    other.error = TaskError("RuntimeError", "late")
    await save(store, other)
    got = await store.get(rec.task_id)
    assert got is not None
    assert got.status is COMPLETED
    assert got.error is None
    assert [r.task_id for r in (await store.query(status=COMPLETED)).records] == [rec.task_id]
    assert (await store.query(status=RUNNING)).records == []
    assert (await store.query(status=TaskStatus.FAILED)).records == []


async def test_a_record_saved_already_terminal() -> None:
    store = MemoryStore()
    rec = make_record(TaskStatus.FAILED, item_id="i")
    await save(store, rec)
    assert [r.task_id for r in (await store.query(status=TaskStatus.FAILED)).records] == [
        rec.task_id
    ]
    assert await store.running_ids_by_item("i") == []
    assert await store.reap(time.time()) == []  # not counted as running anywhere


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


async def test_a_write_of_many_with_a_known_task_updates_it() -> None:
    store = MemoryStore()
    known = make_record(item_id="chat")
    await save(store, known)
    finish(known)
    records = [known] + [make_record(COMPLETED) for _ in range(MANY)]
    await save(store, *records)
    assert await store.running_ids_by_item("chat") == []
    got = await store.get(known.task_id)
    assert got is not None
    assert got.status is COMPLETED
    assert await listed(store, 100) == [rec.task_id for rec in records[::-1]]


async def test_finishing_moves_a_record_out_of_the_running_indexes() -> None:
    store = MemoryStore()
    rec = make_record(item_id="chat")
    await save(store, rec)
    assert await store.running_ids_by_item("chat") == [rec.task_id]
    finish(rec)
    await save(store, rec)
    assert await store.running_ids_by_item("chat") == []
    assert (await store.query(status=RUNNING)).records == []
    assert [r.task_id for r in (await store.query(status=COMPLETED)).records] == [rec.task_id]


# -- query ---------------------------------------------------------------------------------


async def test_query_filters_newest_first() -> None:
    store = MemoryStore()
    a = make_record(user_id="alice", item_id="x")
    b = make_record(COMPLETED, user_id="bob", item_id="x")
    c = make_record(user_id="alice", item_id="y")
    d = make_record(COMPLETED, user_id="alice", item_id="x")
    await save(store, a, b, c, d)

    async def ids(**filters: object) -> list[str]:
        page = await store.query(**filters)  # type: ignore[arg-type]
        return [r.task_id for r in page.records]

    assert await ids() == [d.task_id, c.task_id, b.task_id, a.task_id]
    assert await ids(user_id="alice") == [d.task_id, c.task_id, a.task_id]
    assert await ids(item_id="x") == [d.task_id, b.task_id, a.task_id]
    assert await ids(status=RUNNING) == [c.task_id, a.task_id]
    assert await ids(status=COMPLETED) == [d.task_id, b.task_id]
    assert await ids(user_id="alice", item_id="x") == [d.task_id, a.task_id]
    assert await ids(user_id="alice", item_id="x", status=COMPLETED) == [d.task_id]
    assert await ids(user_id="nobody") == []
    assert await ids(item_id="nothing", status=RUNNING) == []
    page = await store.query(user_id="alice")
    assert page.cursor is None
    assert all(isinstance(r, TaskRecord) for r in page.records)


async def test_query_returns_copies() -> None:
    store = MemoryStore()
    rec = make_record(user_id="u")
    await save(store, rec)
    listed = (await store.query()).records[0]
    assert listed is not rec
    listed.user_id = "mallory"
    assert [r.task_id for r in (await store.query(user_id="u")).records] == [rec.task_id]


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 10, 11])
async def test_paging_visits_every_record_once(limit: int) -> None:
    store = MemoryStore()
    records = [make_record(user_id="u" if i % 2 else "v", item_id="i") for i in range(10)]
    await save(store, *records)
    newest_first = [r.task_id for r in reversed(records)]
    pages = await all_pages(store, limit)
    assert [i for page in pages for i in page] == newest_first
    assert all(0 < len(page) <= limit for page in pages)
    assert len(pages) == -(-10 // limit)
    only_u = await all_pages(store, limit, user_id="u")
    assert [i for page in only_u for i in page] == [
        r.task_id for r in reversed(records) if r.user_id == "u"
    ]


async def test_paging_by_status_is_in_creation_order_whatever_the_finish_order() -> None:
    store = MemoryStore()
    records = [make_record(item_id="i") for _ in range(6)]
    await save(store, *records)
    for index in (3, 0, 5, 1, 4, 2):  # finish out of creation order
        finish(records[index])
        await save(store, records[index])
    newest_first = [r.task_id for r in reversed(records)]
    for limit in (1, 2, 4, 100):
        pages = await all_pages(store, limit, status=COMPLETED)
        assert [i for page in pages for i in page] == newest_first, limit
        combined = await all_pages(store, limit, status=COMPLETED, item_id="i")
        assert [i for page in combined for i in page] == newest_first, limit


async def test_paging_stays_correct_when_records_are_added_between_pages() -> None:
    store = MemoryStore()
    old = [make_record() for _ in range(4)]
    await save(store, *old)
    first = await store.query(limit=2)
    await save(store, make_record(), make_record())  # newer records arrive
    assert first.cursor is not None
    second = await store.query(limit=2, cursor=first.cursor)
    assert [r.task_id for r in first.records + second.records] == [r.task_id for r in reversed(old)]


@pytest.mark.parametrize("cursor", ["abc", "-1", "", "1.5", " 1", "9" * 30])
async def test_query_refuses_a_malformed_cursor(cursor: str) -> None:
    store = MemoryStore()
    await save(store, make_record())
    with pytest.raises(ValueError, match="cursor"):
        await store.query(cursor=cursor)


@pytest.mark.parametrize("limit", [0, -1])
async def test_query_refuses_a_limit_below_one(limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        await MemoryStore().query(limit=limit)


async def test_running_ids_by_item_oldest_first() -> None:
    store = MemoryStore()
    a, b, c = make_record(item_id="x"), make_record(item_id="x"), make_record(item_id="y")
    done = make_record(COMPLETED, item_id="x")
    await save(store, a, done, b, c)
    assert await store.running_ids_by_item("x") == [a.task_id, b.task_id]
    assert await store.running_ids_by_item("y") == [c.task_id]
    assert await store.running_ids_by_item("none") == []


# -- output ---------------------------------------------------------------------------------


async def test_read_output_pages_from_a_cursor() -> None:
    store = MemoryStore()
    rec = make_record()
    await store.save(batch([rec], {rec.task_id: chunks(1, 3)}, time.time()))
    await store.save(batch([], {rec.task_id: chunks(4, 5)}, time.time()))
    assert [c.seq for c in await store.read_output(rec.task_id)] == [1, 2, 3, 4, 5]
    assert [c.seq for c in await store.read_output(rec.task_id, after=3)] == [4, 5]
    assert [c.seq for c in await store.read_output(rec.task_id, after=1, limit=2)] == [2, 3]
    assert await store.read_output(rec.task_id, after=5) == []
    assert await store.read_output(rec.task_id, after=50) == []
    assert await store.read_output(str(uuid.uuid4())) == []
    assert (await store.read_output(rec.task_id))[0] == OutputChunk(1, "c1", 1.0)


async def test_output_of_an_unknown_task_is_not_kept() -> None:
    store = MemoryStore()
    stray = str(uuid.uuid4())
    await store.save(batch([], {stray: chunks(1, 2)}, time.time()))
    assert await store.read_output(stray) == []
    assert store._outputs == {}


async def test_output_streams_are_bounded_by_max_output() -> None:
    store = MemoryStore(Retention(max_output=3))
    rec = make_record()
    await store.save(batch([rec], {rec.task_id: chunks(1, 4)}, time.time()))
    await store.save(batch([], {rec.task_id: chunks(5, 6)}, time.time()))
    assert [c.seq for c in await store.read_output(rec.task_id)] == [4, 5, 6]
    assert [c.seq for c in await store.read_output(rec.task_id, after=2)] == [4, 5, 6]
    assert [c.seq for c in await store.read_output(rec.task_id, after=4)] == [5, 6]


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


async def test_result_ttl_applies_to_reads_without_further_writes() -> None:
    store = MemoryStore(Retention(result_ttl=0.1))
    rec = make_record(COMPLETED, user_id="u")
    await save(store, rec)
    assert await store.get(rec.task_id) is not None
    await asyncio.sleep(0.15)
    assert await store.get(rec.task_id) is None
    assert (await store.query(user_id="u")).records == []


# -- stops ----------------------------------------------------------------------------------


async def test_request_stop_of_a_running_task() -> None:
    store = MemoryStore()
    rec = make_record(instance_id="inst-1")
    other = make_record(instance_id="inst-2")
    await save(store, rec, other)
    answer = await store.request_stop(rec.task_id, 100.0)
    assert answer is not None
    assert answer.status is RUNNING
    assert answer.stop_requested_at == 100.0
    assert await store.pending_stops("inst-1") == [rec.task_id]
    assert await store.pending_stops("inst-2") == []
    again = await store.request_stop(rec.task_id, 200.0)
    assert again is not None
    assert again.stop_requested_at == 100.0  # the first request stands
    assert await store.pending_stops("inst-1") == [rec.task_id]
    answer.stop_requested_at = 1.0  # a copy
    stored = await store.get(rec.task_id)
    assert stored is not None
    assert stored.stop_requested_at == 100.0

    finish(rec, TaskStatus.CANCELLED)
    await save(store, rec)
    assert await store.pending_stops("inst-1") == []


async def test_request_stop_of_a_finished_or_unknown_task() -> None:
    store = MemoryStore()
    rec = make_record(COMPLETED)
    await save(store, rec)
    answer = await store.request_stop(rec.task_id, 100.0)
    assert answer is not None
    assert answer.status is COMPLETED
    assert answer.stop_requested_at is None
    assert await store.pending_stops("inst-1") == []
    assert await store.request_stop(str(uuid.uuid4()), 100.0) is None


# -- liveness -------------------------------------------------------------------------------


async def test_heartbeat_keeps_an_instance_from_being_reaped() -> None:
    store = MemoryStore()
    rec = make_record(instance_id="inst-1")
    await save(store, rec)
    await store.heartbeat("inst-1", 0.2)
    assert await store.reap(time.time()) == []
    await asyncio.sleep(0.1)
    await store.heartbeat("inst-1", 0.2)  # renewed
    await asyncio.sleep(0.15)
    assert await store.reap(time.time()) == []
    got = await store.get(rec.task_id)
    assert got is not None
    assert got.status is RUNNING


async def test_reap_marks_the_running_tasks_of_an_expired_instance_lost() -> None:
    store = MemoryStore()
    dead = [make_record(instance_id="dead", item_id="chat") for _ in range(2)]
    done = make_record(COMPLETED, instance_id="dead")
    alive = make_record(instance_id="alive")
    await save(store, *dead, done, alive)
    await store.heartbeat("dead", 0.05)
    await store.heartbeat("alive", 10)
    await store.request_stop(dead[0].task_id, time.time())
    await asyncio.sleep(0.1)
    now = time.time()
    lost = await store.reap(now)
    assert sorted(r.task_id for r in lost) == sorted(r.task_id for r in dead)
    for rec in lost:
        assert rec.status is TaskStatus.LOST
        assert rec.finished_at == now
        assert rec.error is not None
        assert rec.error.type == "TaskLost"
        assert "dead" in rec.error.message
        stored = await store.get(rec.task_id)
        assert stored is not None
        assert stored.status is TaskStatus.LOST
    assert lost[0] is not await store.get(lost[0].task_id)
    assert await store.running_ids_by_item("chat") == []
    assert await store.pending_stops("dead") == []
    assert (await store.query(status=TaskStatus.LOST)).records != []
    still = await store.get(alive.task_id)
    assert still is not None
    assert still.status is RUNNING
    finished = await store.get(done.task_id)
    assert finished is not None
    assert finished.status is COMPLETED
    assert await store.reap(time.time()) == []  # once only


async def test_reaped_records_count_towards_max_finished() -> None:
    store = MemoryStore(Retention(max_finished=1))
    a, b = make_record(instance_id="dead"), make_record(instance_id="dead")
    await save(store, a, b)
    await store.heartbeat("dead", 0.01)
    await asyncio.sleep(0.05)
    assert len(await store.reap(time.time())) == 2
    assert len(store) == 1
    assert await store.get(b.task_id) is not None


async def test_heartbeat_with_running_records_re_asserts_them() -> None:
    store = MemoryStore()
    known_done = make_record(COMPLETED, instance_id="inst-1")
    await save(store, known_done)
    forgotten = make_record(instance_id="inst-1", item_id="chat")
    as_running = known_done.copy()
    as_running.status = RUNNING
    as_running.finished_at = None
    finished_here = make_record(TaskStatus.FAILED, instance_id="inst-1")
    await store.heartbeat("inst-1", 10, lives([forgotten, as_running, finished_here]))
    got = await store.get(forgotten.task_id)
    assert got is not None
    assert got.status is RUNNING
    assert await store.running_ids_by_item("chat") == [forgotten.task_id]
    kept = await store.get(known_done.task_id)
    assert kept is not None
    assert kept.status is COMPLETED  # terminal in the store: left alone
    assert await store.get(finished_here.task_id) is None  # only running ones are re-asserted


async def test_retire_forgets_a_cleanly_closed_instance() -> None:
    store = MemoryStore()
    rec = make_record(instance_id="inst-1")
    await save(store, rec)
    await store.heartbeat("inst-1", 10)
    finish(rec)
    await save(store, rec)
    await store.retire("inst-1")
    assert "inst-1" not in store._alive
    assert await store.reap(time.time()) == []
    await store.retire("never-seen")  # harmless


async def test_running_tasks_of_a_retired_instance_are_reaped() -> None:
    """Retiring with tasks still recorded running must not make them immortal."""
    store = MemoryStore()
    rec = make_record(instance_id="inst-1")
    await save(store, rec)
    await store.heartbeat("inst-1", 10)
    await store.retire("inst-1")
    lost = await store.reap(time.time())
    assert [r.task_id for r in lost] == [rec.task_id]
    got = await store.get(rec.task_id)
    assert got is not None
    assert got.status is TaskStatus.LOST


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


async def test_terminal_records_keep_errors_metadata_redirects_and_rich_results() -> None:
    rec = make_record()
    rec.metadata = {"tool": "search", "args": {"q": "x"}}
    rec.redirect = {"platform": "slack", "channel_id": "C1"}
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
    assert first.redirect is not None
    first.redirect["channel_id"] = "C2"
    again = await store.get(rec.task_id)
    assert again == rec  # a read gets its own copy of what is kept
    page = await store.query(status=TaskStatus.FAILED)
    assert page.records == [rec]
