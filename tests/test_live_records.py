"""Live records: the tuples a manager keeps for its tasks, and what readers get."""

from __future__ import annotations

import asyncio
import dataclasses
import gc

import taskward._live as live
from helpers import blocked
from taskward import TaskError, TaskManager, TaskRecord, TaskStatus
from taskward._live import (
    STATUS,
    STOP_REQUESTED_AT,
    finished,
    from_record,
    outcome,
    replace,
    snapshot,
)
from taskward.stores._redis_codec import HASH_FIELDS
from taskward.stores.base import InProcessStore


def full_record() -> TaskRecord:
    return TaskRecord(
        "t1",
        TaskStatus.FAILED,
        name="summarise",
        item_id="chat-1",
        user_id="u1",
        channel_id="c1",
        platform="slack",
        instance_id="i1",
        created_at=1.0,
        started_at=1.5,
        updated_at=3.0,
        finished_at=3.0,
        error=TaskError("ValueError", "bad"),
        progress=0.5,
        progress_message="half",
        metadata={"k": [1, 2]},
        redirect={"to": "c2"},
        stop_requested_at=2.0,
        max_runtime=9.0,
    )


def test_a_record_survives_the_trip_to_a_live_record_and_back() -> None:
    rec = full_record()
    assert snapshot(from_record(rec)) == rec
    bare = TaskRecord("t2")
    assert snapshot(from_record(bare)) == bare


def test_every_snapshot_is_the_readers_own() -> None:
    live = from_record(full_record())
    first = snapshot(live)
    first.redirect["to"] = "elsewhere"  # type: ignore[index]
    first.metadata.pop("k")  # type: ignore[attr-defined]
    again = snapshot(live)
    assert again.redirect == {"to": "c2"}
    assert again.metadata == {"k": [1, 2]}


def test_finishing_changes_only_the_end_of_a_record() -> None:
    running = from_record(TaskRecord("t", name="n", user_id="u", created_at=1.0, started_at=1.0))
    ended = finished(running, "failed", None, TaskError("KeyError", "'x'"), 5.0)
    rec = snapshot(ended)
    assert (rec.status, rec.finished_at, rec.updated_at) == (TaskStatus.FAILED, 5.0, 5.0)
    assert rec.error == TaskError("KeyError", "'x'")
    assert (rec.name, rec.user_id, rec.created_at) == ("n", "u", 1.0)
    assert outcome(ended) == (TaskStatus.FAILED, None, TaskError("KeyError", "'x'"))
    assert running[STATUS] == "running"  # a new tuple; the old one is unchanged


def test_replace_changes_the_given_positions() -> None:
    live = from_record(TaskRecord("t"))
    stopped = replace(live, {STOP_REQUESTED_AT: 7.0})
    assert snapshot(stopped).stop_requested_at == 7.0
    assert snapshot(live).stop_requested_at is None


async def test_the_collector_does_not_track_a_running_or_kept_record() -> None:
    """The point of live tuples: a hundred thousand tasks in flight add no record
    objects for each full collection to walk (bench/lifecycle.py)."""
    async with TaskManager() as tm:
        release = asyncio.Event()
        running = await tm.create_task(blocked(release), "chat-1", user_id="u1", name="n")
        # (A dict inside, such as metadata or a dict result, keeps a tuple tracked.)
        done = await tm.create_task(asyncio.sleep(0, result="plain"), "chat-1", user_id="u1")
        await tm.wait(done, timeout=2)
        await asyncio.sleep(0)
        gc.collect()
        assert not gc.is_tracked(tm._table.rows[running])
        await tm.records(limit=1)  # written: the store keeps the finished tuple
        gc.collect()
        assert isinstance(tm._store, InProcessStore)
        kept = tm._store.kept(done)
        assert kept is not None
        assert not gc.is_tracked(kept)
        release.set()
        assert await tm.result(running) == "released"


async def test_written_final_records_leave_the_local_table_and_running_ones_stay() -> None:
    """After a flush the owner drops the final records it wrote (one at a time and
    in a burst alike); a running task's record stays, its end is still to come."""
    async with TaskManager() as tm:
        for size in (1, 40):
            running = from_record(TaskRecord("r"))
            written = [
                finished(from_record(TaskRecord(f"t{i}")), "completed", i, None, 1.0)
                for i in range(size)
            ]
            tm._table.rows.update({rec[0]: rec for rec in [running, *written]})
            tm._table.forget(written)
            tm._table.forget(written)  # again: nothing left to drop
            assert tm._table.rows == {"r": running}
            tm._table.forget([running])
            assert tm._table.rows == {"r": running}
            tm._table.rows.clear()


def test_the_row_layout_the_record_and_the_redis_codec_agree() -> None:
    """One layout: every position constant names the `TaskRecord` field at that
    position, and the Redis hash has one field for every position but the id."""
    positions = {
        name: value
        for name, value in vars(live).items()
        if name.isupper() and type(value) is int and not name.startswith("V_")
    }
    assert sorted(positions.values()) == list(range(len(live.FIELDS)))
    assert {live.FIELDS[value]: name for name, value in positions.items()} == {
        field.name: field.name.upper() for field in dataclasses.fields(TaskRecord)
    }
    hashed = [position for position, _, _ in HASH_FIELDS]
    assert sorted(hashed) == [p for p in range(len(live.FIELDS)) if p != live.TASK_ID]
    assert len({field for _, field, _ in HASH_FIELDS}) == len(HASH_FIELDS)


def test_finished_changes_exactly_the_fields_of_an_end() -> None:
    row = from_record(dataclasses.replace(full_record(), status=TaskStatus.RUNNING, error=None))
    error = TaskError("E", "m")
    end = finished(row, "failed", "r", error, 9.0)
    changed = {
        live.FIELDS[i]
        for i, (before, after) in enumerate(zip(row, end, strict=True))
        if before != after
    }
    assert changed == {"status", "updated_at", "finished_at", "result", "error"}
    assert end[live.ERROR] is error
    assert end == replace(
        row,
        {
            live.STATUS: "failed",
            live.UPDATED_AT: 9.0,
            live.FINISHED_AT: 9.0,
            live.RESULT: "r",
            live.ERROR: error,
        },
    )


def test_a_new_row_is_the_row_of_a_new_running_record() -> None:
    rec = TaskRecord(
        "t",
        name="n",
        item_id="i",
        user_id="u",
        channel_id="c",
        platform="p",
        instance_id="o",
        created_at=5.0,
        started_at=5.0,
        updated_at=5.0,
        metadata={"k": 1},
        max_runtime=9.0,
    )
    row = live.new_row("t", "n", "i", "u", "c", "p", "o", 5.0, {"k": 1}, 9.0)
    assert row == from_record(rec)
    assert snapshot(row) == rec
