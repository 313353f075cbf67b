"""What every `Store` must do, run unchanged against each backend.

A backend joins by adding a parameter to `make_store`: a factory of started
stores (``await make_store(**retention_settings)``), each a fresh, empty store
(stores made by one test share their data, as instances on one server do).
Only the protocol of `taskward.stores.base` is used here.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING, Any

import pytest

from taskward import OutputChunk, TaskError, TaskRecord, TaskStatus
from taskward.stores.base import (
    InProcessStore,
    InstanceInfo,
    Retention,
    Store,
    WriteBatch,
    record_to_row,
    redirect_target,
)
from taskward.stores.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

    MakeStore = Callable[..., Awaitable[Store]]

RUNNING = TaskStatus.RUNNING
COMPLETED = TaskStatus.COMPLETED
FAILED = TaskStatus.FAILED
CANCELLED = TaskStatus.CANCELLED
LOST = TaskStatus.LOST

# Creation times one ms apart, so "newest first" means the same in every store.
_ticks = itertools.count(1)


def now() -> float:
    return time.time()


def rec(task_id: str, status: TaskStatus = RUNNING, **fields: Any) -> TaskRecord:
    """A record created a tick after the one before (finished at once if terminal)."""
    created = fields.pop("created_at", now() - 600 + next(_ticks) / 1000)
    fields.setdefault("instance_id", "inst-a")
    fields.setdefault("updated_at", created)
    if status is not RUNNING:
        fields.setdefault("finished_at", created)
    return TaskRecord(task_id, status, created_at=created, **fields)


def ended(
    record: TaskRecord, status: TaskStatus = COMPLETED, at: float | None = None
) -> TaskRecord:
    """A copy of `record`, finished."""
    out = record.copy()
    out.status = status
    out.finished_at = out.updated_at = now() if at is None else at
    out.result = "done" if status is COMPLETED else None
    return out


def write(
    records: Iterable[TaskRecord] = (),
    outputs: dict[str, list[OutputChunk]] | None = None,
    at: float | None = None,
) -> WriteBatch:
    return WriteBatch(
        [record_to_row(r) for r in records], outputs or {}, now() if at is None else at
    )


def chunks(first: int, last: int) -> list[OutputChunk]:
    return [
        OutputChunk(seq, f"line {seq} | with a bar", 1000.0 + seq) for seq in range(first, last + 1)
    ]


async def listing(store: Store, limit: int, **filters: Any) -> list[list[str]]:
    """Every page of a listing, as task ids."""
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page = await store.query(limit=limit, cursor=cursor, **filters)
        assert len(page.records) <= limit
        pages.append([r.task_id for r in page.records])
        cursor = page.cursor
        if cursor is None:
            return pages
        assert len(pages) < 1000, "the listing does not end"


async def listed(store: Store, limit: int = 100, **filters: Any) -> list[str]:
    return [task_id for page in await listing(store, limit, **filters) for task_id in page]


async def statuses(store: Store, *task_ids: str) -> list[TaskStatus | None]:
    return [None if r is None else r.status for r in await store.get_many(task_ids)]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[MakeStore]:
    made: list[Store] = []
    closing: list[Any] = []
    build: Callable[[Retention], Store]
    if request.param == "memory":
        shared: list[MemoryStore] = []

        def build(retention: Retention) -> Store:
            # One data set per test, as one server: a second store is the same object.
            if not shared:
                shared.append(MemoryStore(retention))
            return shared[0]

    else:
        import redis.asyncio

        from taskward.stores.keys import Keys
        from taskward.stores.redis import RedisStore

        url: str = request.getfixturevalue("redis_url")
        prefix: str = request.getfixturevalue("key_prefix")
        client = redis.asyncio.Redis.from_url(url)
        closing.append(client)

        def build(retention: Retention) -> Store:
            return RedisStore(client, keys=Keys(prefix), retention=retention)

    async def make(**retention: Any) -> Store:
        store = build(Retention(**retention))
        await store.start()
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()
    for client in closing:
        await client.aclose()


@pytest.fixture
async def store(make_store: MakeStore) -> Store:
    return await make_store()


class TestStoreContract:
    # -- writes and reads ------------------------------------------------------------------

    async def test_start_and_aclose_are_harmless(self, store: Store) -> None:
        await store.start()
        await store.aclose()
        await store.aclose()
        assert store.retention == Retention()

    async def test_a_record_reads_back_with_every_field(self, store: Store) -> None:
        full = rec(
            "full",
            name="search",
            item_id="chat-1",
            user_id="user-1",
            channel_id="c1",
            platform="slack",
            started_at=now() - 1,
            progress=0.25,
            progress_message="a quarter",
            metadata={"k": [1, 2], "é": "ü"},
            max_runtime=30.0,
        )
        bare = rec("bare")
        failed = ended(rec("failed"), FAILED)
        failed.error = TaskError("ValueError", "no good")
        done = ended(rec("done"))
        done.result = {"answer": 42, "list": [1, "two"]}
        await store.save(write([full, bare, failed, done]))
        for expected in (full, bare, failed, done):
            assert await store.get(expected.task_id) == expected
        assert await store.get("unknown") is None

    async def test_reads_are_fresh_copies(self, store: Store) -> None:
        record = rec("t", user_id="u", metadata={"tool": "x"})
        await store.save(write([record]))
        got = await store.get("t")
        assert got is not None
        got.metadata["tool"] = "changed"  # type: ignore[index]
        got.status = FAILED
        listed_copy = (await store.query(user_id="u")).records[0]
        listed_copy.user_id = "mallory"
        assert await store.get("t") == record
        assert await listed(store, user_id="u") == ["t"]

    async def test_get_many_answers_in_the_order_asked(self, store: Store) -> None:
        a, b = rec("a"), rec("b")
        await store.save(write([a, b]))
        assert await store.get_many(["b", "missing", "a"]) == [b, None, a]
        assert await store.get_many([]) == []

    async def test_a_later_write_updates_and_clears_fields(self, store: Store) -> None:
        record = rec("t", progress_message="working")
        await store.save(write([record]))
        record.progress, record.progress_message = 0.5, None
        await store.save(write([record]))
        assert await store.get("t") == record

    async def test_finishing_moves_a_record_between_status_listings(self, store: Store) -> None:
        record = rec("t", item_id="chat")
        await store.save(write([record]))
        assert await listed(store, status=RUNNING) == ["t"]
        assert await store.running_ids_by_item("chat") == ["t"]
        await store.save(write([ended(record)]))
        assert await listed(store, status=RUNNING) == []
        assert await listed(store, status=COMPLETED) == ["t"]
        assert await store.running_ids_by_item("chat") == []

    async def test_a_record_first_written_terminal_is_indexed(self, store: Store) -> None:
        await store.save(write([rec("t", FAILED, user_id="u", item_id="chat")]))
        assert await listed(store, user_id="u", status=FAILED) == ["t"]
        assert await store.running_ids_by_item("chat") == []
        assert (await store.counts())[FAILED] == 1
        assert await store.reap(now()) == []  # running nowhere

    async def test_a_terminal_record_never_changes(self, store: Store) -> None:
        record = rec("t", user_id="u")
        done = ended(record)
        await store.save(write([done]))
        late_failure = ended(record, FAILED)
        late_failure.error = TaskError("RuntimeError", "late")
        await store.save(write([late_failure]))
        await store.save(write([record]))  # a stale running copy
        await store.heartbeat("inst-a", 10, [record_to_row(record)])
        assert await store.get("t") == done
        assert await listed(store, status=COMPLETED) == ["t"]
        assert await listed(store, status=FAILED) == []
        assert await listed(store, status=RUNNING) == []
        counts = await store.counts()
        assert (counts[COMPLETED], counts[FAILED], counts[RUNNING]) == (1, 0, 0)

    async def test_a_task_twice_in_one_write_is_kept_as_first_written(self, store: Store) -> None:
        first = rec("t", COMPLETED)
        second = ended(first, FAILED)
        await store.save(write([first, rec("other", COMPLETED), second]))
        assert await statuses(store, "t", "other") == [COMPLETED, COMPLETED]
        assert (await store.counts())[COMPLETED] == 2

    # -- listings ----------------------------------------------------------------------------

    async def test_listings_filter_and_combine_newest_first(self, store: Store) -> None:
        records = []
        for i in range(30):
            status = [RUNNING, COMPLETED, FAILED, CANCELLED, LOST][i % 5]
            records.append(rec(f"t{i:02d}", status, user_id=f"u{i % 2}", item_id=f"i{i % 3}"))
        await store.save(write(records))

        def expect(**want: Any) -> list[str]:
            return [
                r.task_id
                for r in reversed(records)
                if all(getattr(r, name) == value for name, value in want.items())
            ]

        cases: list[dict[str, Any]] = [
            {},
            {"user_id": "u1"},
            {"item_id": "i2"},
            {"status": COMPLETED},
            {"status": RUNNING},
            {"user_id": "u0", "item_id": "i0"},
            {"user_id": "u1", "status": LOST},
            {"item_id": "i1", "status": FAILED},
            {"user_id": "u0", "item_id": "i1", "status": RUNNING},
            {"user_id": "nobody"},
            {"item_id": "nothing", "status": RUNNING},
        ]
        for filters in cases:
            for limit in (1, 4, 100):
                assert await listed(store, limit, **filters) == expect(**filters), (filters, limit)

    async def test_pages_split_a_listing_without_gaps_or_repeats(self, store: Store) -> None:
        records = [rec(f"t{i:02d}", user_id="u" if i % 2 else "v") for i in range(10)]
        await store.save(write(records))
        newest_first = [r.task_id for r in reversed(records)]
        for limit in (1, 2, 3, 7, 10, 11):
            pages = await listing(store, limit)
            assert [i for page in pages for i in page] == newest_first
            assert all(len(page) == limit for page in pages[:-1])
            assert len(pages) == -(-10 // limit) or pages[-1] == []
        first = await store.query(limit=100)
        assert first.cursor is None

    async def test_a_status_listing_is_in_creation_order_whatever_the_finish_order(
        self, store: Store
    ) -> None:
        records = [rec(f"t{i}", item_id="i") for i in range(6)]
        await store.save(write(records))
        for k, index in enumerate((3, 0, 5, 1, 4, 2)):
            await store.save(write([ended(records[index], at=now() + k)]))
        newest_first = [r.task_id for r in reversed(records)]
        for limit in (1, 2, 4, 100):
            assert await listed(store, limit, status=COMPLETED) == newest_first
            assert await listed(store, limit, status=COMPLETED, item_id="i") == newest_first

    async def test_a_cursor_survives_records_added_between_pages(self, store: Store) -> None:
        old = [rec(f"old{i}") for i in range(4)]
        await store.save(write(old))
        first = await store.query(limit=2)
        await store.save(write([rec("new0"), rec("new1")]))
        assert first.cursor is not None
        second = await store.query(limit=2, cursor=first.cursor)
        assert [r.task_id for r in first.records + second.records] == [
            "old3",
            "old2",
            "old1",
            "old0",
        ]

    async def test_a_cursor_survives_its_record_leaving(self, make_store: MakeStore) -> None:
        store = await make_store(max_finished=1)
        running = [rec(f"r{i}") for i in range(4)]
        await store.save(write(running))
        first = await store.query(limit=3)
        assert [r.task_id for r in first.records] == ["r3", "r2", "r1"]
        assert first.cursor is not None
        t0 = now()
        await store.save(write([ended(running[1], at=t0)], at=t0))
        await store.save(write([ended(running[2], at=t0 + 1)], at=t0 + 1))  # evicts r1
        assert await store.get("r1") is None
        rest = await store.query(limit=10, cursor=first.cursor)
        assert [r.task_id for r in rest.records] == ["r0"]

    @pytest.mark.parametrize(
        "cursor", ["", "garbage!", "-1", "1.5", "bm90LWEtY3Vyc29y", "x" * 2000]
    )
    async def test_a_malformed_cursor_is_a_value_error(self, store: Store, cursor: str) -> None:
        await store.save(write([rec("t")]))
        with pytest.raises(ValueError, match="cursor"):
            await store.query(cursor=cursor)

    @pytest.mark.parametrize("limit", [0, -1])
    async def test_a_limit_below_one_is_a_value_error(self, store: Store, limit: int) -> None:
        with pytest.raises(ValueError, match="limit"):
            await store.query(limit=limit)

    async def test_running_ids_by_item_oldest_first(self, store: Store) -> None:
        a, b, c = rec("a", item_id="x"), rec("b", item_id="x"), rec("c", item_id="y")
        await store.save(write([a, rec("done", COMPLETED, item_id="x"), b, c]))
        assert await store.running_ids_by_item("x") == ["a", "b"]
        assert await store.running_ids_by_item("y") == ["c"]
        assert await store.running_ids_by_item("none") == []

    # -- counts ------------------------------------------------------------------------------

    async def test_counts_have_every_status(self, store: Store) -> None:
        assert await store.counts() == dict.fromkeys(TaskStatus, 0)
        records = [rec(f"t{i}", [RUNNING, COMPLETED, COMPLETED, FAILED][i % 4]) for i in range(8)]
        await store.save(write(records))
        assert await store.counts() == {RUNNING: 2, COMPLETED: 4, FAILED: 2, CANCELLED: 0, LOST: 0}
        await store.save(write([ended(records[0], CANCELLED)]))
        assert await store.counts() == {RUNNING: 1, COMPLETED: 4, FAILED: 2, CANCELLED: 1, LOST: 0}

    # -- output ------------------------------------------------------------------------------

    async def test_output_reads_from_a_cursor(self, store: Store) -> None:
        await store.save(write([rec("t")], {"t": chunks(1, 3)}))
        await store.save(write([], {"t": chunks(4, 5)}))
        assert await store.read_output("t") == chunks(1, 5)
        assert [c.seq for c in await store.read_output("t", after=3)] == [4, 5]
        assert [c.seq for c in await store.read_output("t", after=1, limit=2)] == [2, 3]
        assert await store.read_output("t", after=5) == []
        assert await store.read_output("unknown") == []
        await store.save(write([], {"t": chunks(4, 5)}))  # sent again (a retry): no change
        assert await store.read_output("t") == chunks(1, 5)

    async def test_output_is_capped_at_max_output(self, make_store: MakeStore) -> None:
        store = await make_store(max_output=3)
        await store.save(write([rec("t")], {"t": chunks(1, 4)}))
        await store.save(write([], {"t": chunks(5, 6)}))
        assert [c.seq for c in await store.read_output("t")] == [4, 5, 6]
        assert [c.seq for c in await store.read_output("t", after=4)] == [5, 6]

    async def test_output_of_an_unknown_task_is_not_kept(self, store: Store) -> None:
        await store.save(write([], {"ghost": chunks(1, 2)}))
        assert await store.read_output("ghost") == []
        await store.save(write([rec("ghost")]))
        assert await store.read_output("ghost") == []

    # -- retention ---------------------------------------------------------------------------

    async def test_max_finished_keeps_the_newest_finished(self, make_store: MakeStore) -> None:
        store = await make_store(max_finished=3)
        t0 = now()
        running = rec("long", user_id="u", item_id="i")
        await store.save(write([running]))
        finished = [rec(f"t{i}", user_id="u", item_id=f"i{i}") for i in range(5)]
        await store.save(write(finished, {r.task_id: chunks(1, 1) for r in finished}))
        for i, record in enumerate(finished):
            await store.save(write([ended(record, at=t0 + i)], at=t0 + i))
        assert await statuses(store, "t0", "t1") == [None, None]
        assert await store.read_output("t0") == []
        assert await statuses(store, "t2", "t3", "t4", "long") == [COMPLETED] * 3 + [RUNNING]
        assert len(await store.read_output("t4")) == 1
        assert await listed(store, user_id="u") == ["t4", "t3", "t2", "long"]
        assert await listed(store, item_id="i0") == []
        assert (await store.counts())[COMPLETED] == 3

    async def test_result_ttl_drops_records_by_their_finish_time(
        self, make_store: MakeStore
    ) -> None:
        store = await make_store(result_ttl=10)
        t0 = now()
        old = rec("old", COMPLETED, user_id="u", finished_at=t0 - 11)
        recent = rec("recent", COMPLETED, user_id="u", finished_at=t0 - 5)
        running = rec("long", user_id="u", created_at=t0 - 1000)
        await store.save(write([old, recent, running], at=t0))
        assert await statuses(store, "old", "recent", "long") == [None, COMPLETED, RUNNING]
        await store.save(write([rec("later", COMPLETED, finished_at=t0 + 6)], at=t0 + 6))
        assert await statuses(store, "recent", "long", "later") == [None, RUNNING, COMPLETED]
        assert await listed(store, user_id="u") == ["long"]

    async def test_result_ttl_holds_without_further_writes(self, make_store: MakeStore) -> None:
        store = await make_store(result_ttl=0.2)
        await store.save(write([rec("t", user_id="u", item_id="i")], {"t": chunks(1, 2)}))
        await store.save(write([ended(rec("t", user_id="u", item_id="i"))]))
        assert await store.get("t") is not None
        await asyncio.sleep(0.5)
        assert await store.get("t") is None
        assert await store.read_output("t") == []
        assert await listed(store, user_id="u") == []
        assert await listed(store, status=COMPLETED) == []
        assert await store.counts() == dict.fromkeys(TaskStatus, 0)

    # -- stops -------------------------------------------------------------------------------

    async def test_request_stop_of_a_running_task(self, store: Store) -> None:
        await store.save(
            write([rec("t", instance_id="i1", user_id="u"), rec("o", instance_id="i2")])
        )
        answer = await store.request_stop("t", 100.0, user_id="u")
        assert answer is not None
        assert (answer.status, answer.stop_requested_at) == (RUNNING, 100.0)
        assert await store.pending_stops("i1") == ["t"]
        assert await store.pending_stops("i2") == []
        again = await store.request_stop("t", 200.0)
        assert again is not None
        assert again.stop_requested_at == 100.0  # the first request stands
        stored = await store.get("t")
        assert stored is not None
        assert stored.stop_requested_at == 100.0
        await store.save(write([ended(rec("t", instance_id="i1", user_id="u"), CANCELLED)]))
        assert await store.pending_stops("i1") == []

    async def test_concurrent_stop_requests_agree(self, store: Store) -> None:
        await store.save(write([rec("t")]))
        answers = await asyncio.gather(*(store.request_stop("t", 100.0 + i) for i in range(20)))
        assert len({a.stop_requested_at for a in answers if a is not None}) == 1
        assert await store.pending_stops("inst-a") == ["t"]

    async def test_an_owners_write_keeps_the_stop_request(self, store: Store) -> None:
        record = rec("t")
        await store.save(write([record]))
        await store.request_stop("t", 100.0)
        record.progress = 0.5  # the owner's copy knows nothing of the request yet
        await store.save(write([record]))
        got = await store.get("t")
        assert got is not None
        assert (got.stop_requested_at, got.progress) == (100.0, 0.5)

    async def test_request_stop_of_a_finished_task_changes_nothing(self, store: Store) -> None:
        await store.save(write([rec("t", COMPLETED)]))
        answer = await store.request_stop("t", 100.0)
        assert answer is not None
        assert (answer.status, answer.stop_requested_at) == (COMPLETED, None)
        assert await store.pending_stops("inst-a") == []

    async def test_request_stop_of_an_unknown_or_another_users_task_is_none(
        self, store: Store
    ) -> None:
        await store.save(write([rec("t", user_id="alice")]))
        assert await store.request_stop("unknown", 100.0) is None
        assert await store.request_stop("t", 100.0, user_id="bob") is None
        got = await store.get("t")
        assert got is not None
        assert got.stop_requested_at is None
        assert await store.pending_stops("inst-a") == []

    # -- liveness ----------------------------------------------------------------------------

    async def test_a_heartbeat_says_whether_the_instance_was_still_alive(
        self, store: Store
    ) -> None:
        assert await store.heartbeat("inst-a", 10) is False  # new
        assert await store.heartbeat("inst-a", 0.05) is True
        await asyncio.sleep(0.2)
        assert await store.heartbeat("inst-a", 10) is False  # lapsed

    async def test_a_heartbeat_re_asserts_running_records(self, store: Store) -> None:
        known_done = rec("done", COMPLETED)
        await store.save(write([known_done]))
        forgotten = rec("forgotten", item_id="chat")
        as_running = rec("done", created_at=known_done.created_at)
        ended_here = rec("ended", FAILED)
        rows = [record_to_row(r) for r in (forgotten, as_running, ended_here)]
        await store.heartbeat("inst-a", 10, rows)
        assert await store.get("forgotten") == forgotten
        assert await store.running_ids_by_item("chat") == ["forgotten"]
        assert await store.get("done") == known_done  # terminal in the store: left alone
        assert await store.get("ended") is None  # only running records are re-asserted

    async def test_reap_marks_the_running_tasks_of_a_lapsed_instance_lost(
        self, store: Store
    ) -> None:
        await store.heartbeat("dead", 0.05)
        await store.heartbeat("alive", 30)
        dead = [rec(f"d{i}", instance_id="dead", user_id="u", item_id="chat") for i in range(3)]
        await store.save(
            write(
                [
                    *dead,
                    rec("finished", COMPLETED, instance_id="dead"),
                    rec("a", instance_id="alive"),
                ]
            )
        )
        await store.request_stop("d0", now())
        await asyncio.sleep(0.2)
        at = now()
        lost = await store.reap(at)
        assert sorted(r.task_id for r in lost) == ["d0", "d1", "d2"]
        for record in lost:
            assert (record.status, record.finished_at) == (LOST, at)
            assert record.error == TaskError(
                "TaskLost", f"task '{record.task_id}' was lost with its instance 'dead'"
            )
            assert await store.get(record.task_id) == record
        assert await statuses(store, "finished", "a") == [COMPLETED, RUNNING]
        assert await store.running_ids_by_item("chat") == []
        assert await store.pending_stops("dead") == []
        assert await listed(store, user_id="u", status=LOST) == ["d2", "d1", "d0"]
        assert (await store.counts())[LOST] == 3
        assert [i.instance_id for i in await store.instances()] == ["alive"]
        assert await store.reap(now()) == []  # once only

    async def test_an_instance_known_only_by_its_running_tasks_is_reaped(
        self, store: Store
    ) -> None:
        await store.save(write([rec("t", instance_id="silent")]))
        assert await store.instances() == [InstanceInfo("silent", False, 1, None)]
        assert [r.task_id for r in await store.reap(now())] == ["t"]
        assert await store.instances() == []

    async def test_retire_forgets_an_instance_without_running_tasks(self, store: Store) -> None:
        await store.heartbeat("idle", 30)
        record = rec("t", instance_id="idle")
        await store.save(write([record]))
        await store.save(write([ended(record)]))
        await store.retire("idle")
        assert await store.instances() == []
        assert await store.reap(now()) == []
        assert await store.heartbeat("idle", 30) is False  # back as a new instance
        await store.retire("never-seen")  # harmless

    async def test_a_retired_instance_with_running_tasks_is_left_to_the_reaper(
        self, store: Store
    ) -> None:
        await store.heartbeat("busy", 30)
        await store.save(write([rec("t", instance_id="busy")]))
        await store.retire("busy")
        [info] = await store.instances()
        assert (info.instance_id, info.alive, info.running) == ("busy", False, 1)
        assert [r.task_id for r in await store.reap(now())] == ["t"]
        assert await statuses(store, "t") == [LOST]
        assert await store.instances() == []

    async def test_instances_say_who_is_alive_runs_what_and_beat_when(self, store: Store) -> None:
        before = now()
        await store.heartbeat("b", 30)
        await store.heartbeat("a", 0.05)
        after = now()
        await store.save(write([rec("a1", instance_id="a"), rec("a2", instance_id="a")]))
        await store.save(write([rec("b1", instance_id="b"), rec("b2", COMPLETED, instance_id="b")]))
        found = await store.instances()
        assert [(i.instance_id, i.alive, i.running) for i in found] == [
            ("a", True, 2),
            ("b", True, 1),
        ]
        for info in found:
            assert info.last_heartbeat is not None
            assert before <= info.last_heartbeat <= after
        await asyncio.sleep(0.2)
        lapsed = await store.instances()  # a's liveness lapsed: shown as such until reaped
        assert [(i.instance_id, i.alive, i.running) for i in lapsed] == [
            ("a", False, 2),
            ("b", True, 1),
        ]
        assert lapsed[0].last_heartbeat == found[0].last_heartbeat
        await store.reap(now())
        assert [i.instance_id for i in await store.instances()] == ["b"]

    async def test_stores_made_on_the_same_data_see_each_other(self, make_store: MakeStore) -> None:
        """Two instances' stores on one server (or one memory store in a process)."""
        mine, theirs = await make_store(), await make_store()
        await mine.heartbeat("mine", 30)
        await mine.save(write([rec("t", instance_id="mine", user_id="u")]))
        assert await listed(theirs, user_id="u") == ["t"]
        answer = await theirs.request_stop("t", 100.0, user_id="u")
        assert answer is not None
        assert await mine.pending_stops("mine") == ["t"]
        assert [i.instance_id for i in await theirs.instances()] == ["mine"]


async def test_only_the_memory_store_answers_in_process(store: Store) -> None:
    assert isinstance(store, InProcessStore) is isinstance(store, MemoryStore)


def target(channel: str = "C1", platform: str = "webhook", max_chars: int = 0) -> dict[str, Any]:
    return redirect_target(channel, platform, max_chars, now())


class TestRedirectContract:
    """The redirect a store owns, and its delivery queue."""

    async def test_save_never_writes_nor_clears_a_redirect(self, store: Store) -> None:
        record = rec("t", user_id="u", redirect={"channel_id": "from the owner"})
        await store.save(write([record]))
        got = await store.get("t")
        assert got is not None and got.redirect is None
        answer = await store.set_redirect("t", target(), now())
        assert answer is not None and answer.redirect is not None
        assert answer.redirect["channel_id"] == "C1" and answer.redirect["state"] is None
        record.redirect = None
        record.progress = 0.5
        await store.save(write([record]))  # the owner knows nothing of it
        got = await store.get("t")
        assert got is not None and got.progress == 0.5
        assert got.redirect is not None and got.redirect["channel_id"] == "C1"
        assert await store.pending_deliveries() == 0  # running: nothing to deliver yet

    async def test_an_unknown_or_foreign_task_takes_no_redirect(self, store: Store) -> None:
        await store.save(write([rec("t", user_id="u")]))
        assert await store.set_redirect("missing", target(), now()) is None
        assert await store.set_redirect("t", target(), now(), user_id="mallory") is None
        got = await store.get("t")
        assert got is not None and got.redirect is None
        assert await store.set_redirect("t", target(), now(), user_id="u") is not None

    async def test_a_task_ending_with_a_redirect_enqueues_its_delivery(self, store: Store) -> None:
        record = rec("t", user_id="u", item_id="chat", name="search")
        await store.save(write([record]))
        await store.set_redirect("t", target("C9", "slack", 100), now())
        done = ended(record)
        done.result = {"answer": "é", "n": [1, 2]}
        await store.save(write([done]))
        assert await store.pending_deliveries() == 1
        got = await store.get("t")
        assert got is not None and got.redirect is not None
        assert got.redirect["state"] == "pending" and got.redirect["delivery_id"]
        assert got.redirect["enqueued_at"] == pytest.approx(done.finished_at)
        [claimed] = await store.claim_deliveries(now(), 30, 10)
        assert claimed.delivery_id == got.redirect["delivery_id"]
        assert (claimed.task_id, claimed.channel_id, claimed.platform) == ("t", "C9", "slack")
        assert (claimed.max_chars, claimed.attempts, claimed.status) == (100, 1, COMPLETED)
        assert claimed.result == {"answer": "é", "n": [1, 2]}
        assert (claimed.name, claimed.user_id, claimed.item_id) == ("search", "u", "chat")
        assert claimed.finished_at == pytest.approx(done.finished_at)
        assert claimed.error is None
        again = await store.get("t")
        assert again is not None and again.redirect is not None
        assert again.redirect["attempts"] == 1

    async def test_a_redirect_on_an_ended_task_is_enqueued_once_per_target(
        self, store: Store
    ) -> None:
        failed = ended(rec("t"), FAILED)
        failed.error = TaskError("ValueError", "no good")
        await store.save(write([failed]))
        first = await store.set_redirect("t", target("C1"), now())
        assert first is not None and first.redirect is not None
        assert first.redirect["state"] == "pending"
        same = await store.set_redirect("t", target("C1"), now())
        assert same is not None and same.redirect == first.redirect
        assert await store.pending_deliveries() == 1
        other = await store.set_redirect("t", target("C2"), now())
        assert other is not None and other.redirect is not None
        assert other.redirect["delivery_id"] != first.redirect["delivery_id"]
        claimed = await store.claim_deliveries(now(), 30, 10)
        assert sorted(d.channel_id for d in claimed) == ["C1", "C2"]
        assert {d.status for d in claimed} == {FAILED}
        assert {d.error for d in claimed} == {TaskError("ValueError", "no good")}

    async def test_a_reaped_task_delivers_that_it_was_lost(self, store: Store) -> None:
        await store.save(write([rec("t", instance_id="dead")]))
        await store.set_redirect("t", target(), now())
        [lost] = await store.reap(now())
        assert lost.status is LOST
        [claimed] = await store.claim_deliveries(now(), 30, 10)
        assert claimed.status is LOST and claimed.error is not None
        assert claimed.error.type == "TaskLost"

    async def test_a_claim_is_a_lease(self, make_store: MakeStore) -> None:
        mine, theirs = await make_store(), await make_store()
        await mine.save(write([ended(rec("t"))]))
        await mine.set_redirect("t", target(), now())
        start = now()
        [first] = await mine.claim_deliveries(start, 5, 10)
        assert await theirs.claim_deliveries(start + 1, 5, 10) == []  # leased to mine
        [second] = await theirs.claim_deliveries(start + 6, 5, 10)  # mine's lease ended
        assert second.delivery_id == first.delivery_id
        assert second.attempts == 2 and second.token != first.token
        # The first claimer's outcome comes too late: refused, nothing changes.
        assert not await mine.end_delivery(first, True, None, now())
        assert not await mine.retry_delivery(first, now(), "late")
        assert await theirs.end_delivery(second, True, None, now())
        got = await mine.get("t")
        assert got is not None and got.redirect is not None
        assert got.redirect["state"] == "delivered" and got.redirect["attempts"] == 2
        assert got.redirect["done_at"] is not None
        assert await mine.pending_deliveries() == 0
        assert await mine.claim_deliveries(start + 100, 5, 10) == []

    async def test_a_retry_waits_until_due_and_records_the_error(self, store: Store) -> None:
        await store.save(write([ended(rec("t"))]))
        await store.set_redirect("t", target(), now())
        start = now()
        [claimed] = await store.claim_deliveries(start, 30, 10)
        assert await store.retry_delivery(claimed, start + 10, "HTTP 503: busy")
        assert await store.claim_deliveries(start + 9, 30, 10) == []
        got = await store.get("t")
        assert got is not None and got.redirect is not None
        assert got.redirect["state"] == "pending"
        assert got.redirect["last_error"] == "HTTP 503: busy"
        [again] = await store.claim_deliveries(start + 10, 30, 10)
        assert again.attempts == 2
        assert not await store.retry_delivery(claimed, start, "stale token")
        assert await store.end_delivery(again, False, "gave up", start + 11)
        got = await store.get("t")
        assert got is not None and got.redirect is not None
        assert got.redirect["state"] == "failed" and got.redirect["last_error"] == "gave up"
        assert got.redirect["done_at"] == pytest.approx(start + 11)

    async def test_claims_take_the_oldest_due_first_within_the_limit(self, store: Store) -> None:
        for i in range(5):
            await store.save(write([ended(rec(f"t{i}"))]))
            await store.set_redirect(f"t{i}", target(), 1000.0 + i)
        first = await store.claim_deliveries(now(), 30, 2)
        assert [d.task_id for d in first] == ["t0", "t1"]
        rest = await store.claim_deliveries(now(), 30, 10)
        assert [d.task_id for d in rest] == ["t2", "t3", "t4"]

    async def test_a_delivery_outlives_its_record(self, make_store: MakeStore) -> None:
        store = await make_store(max_finished=1)
        for task_id in ("old", "new"):
            await store.save(write([rec(task_id)]))
            await store.set_redirect(task_id, target(), now())
            done = ended(rec(task_id))
            done.result = f"result of {task_id}"
            await store.save(write([done]))
        assert await store.get("old") is None  # trimmed by max_finished
        claimed = await store.claim_deliveries(now(), 30, 10)
        assert sorted(d.result for d in claimed) == ["result of new", "result of old"]
        for delivery in claimed:
            assert await store.end_delivery(delivery, True, None, now())
