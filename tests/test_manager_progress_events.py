"""Progress and output from inside tasks (report_progress, emit, read_output) and events()."""

from __future__ import annotations

import asyncio
import json
import math
from typing import TYPE_CHECKING, Any

import pytest

from helpers import Peers, forever, value
from taskward import (
    EventStream,
    ManagerClosed,
    OutputChunk,
    TaskEvent,
    TaskManager,
    TaskNotFound,
    TaskRecord,
    TaskStatus,
    ValueNotEncodable,
    emit,
    report_progress,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine


@pytest.fixture
def manager_defaults(manager_defaults: dict[str, Any]) -> dict[str, Any]:
    """Short stops, too."""
    return {**manager_defaults, "stop_timeout": 1.0}


async def emitting(items: list[Any], release: asyncio.Event | None = None) -> str:
    for item in items:
        emit(item)
    if release is not None:
        await release.wait()
    return "done"


async def next_event(stream: EventStream, timeout: float = 1.0) -> TaskEvent:
    async with asyncio.timeout(timeout):
        return await anext(stream)


async def drain(stream: EventStream, until_kind: str, timeout: float = 1.0) -> list[TaskEvent]:
    """Events up to and including the first of `until_kind`."""
    got: list[TaskEvent] = []
    while True:
        event = await next_event(stream, timeout)
        got.append(event)
        if event.kind == until_kind:
            return got


# -- report_progress -----------------------------------------------------------------------


async def test_report_progress_shows_in_records_and_results(tm: TaskManager) -> None:
    step = asyncio.Event()
    reported = asyncio.Event()

    async def working() -> str:
        report_progress(0.5, "half way")
        reported.set()
        await step.wait()
        report_progress(1)  # an int is a number; the message is kept
        return "ok"

    task_id = await tm.create_task(working(), user_id="u")
    await reported.wait()
    rec = await tm.get_record(task_id)
    assert rec is not None
    assert rec.progress == 0.5
    assert rec.progress_message == "half way"
    envelope = json.loads(await tm.get_result(task_id))
    assert (envelope["progress"], envelope["progress_message"]) == (0.5, "half way")
    listed = json.loads(await tm.list_tasks(user_id="u"))["tasks"][0]
    assert listed["progress"] == 0.5
    step.set()
    final = await tm.wait(task_id, timeout=1)
    assert final.progress == 1.0
    assert isinstance(final.progress, float)
    assert final.progress_message == "half way"


async def test_report_progress_from_a_child_asyncio_task(tm: TaskManager) -> None:
    async def parent() -> None:
        await asyncio.create_task(child())

    async def child() -> None:
        report_progress(0.3, "from the child")

    task_id = await tm.create_task(parent())
    rec = await tm.wait(task_id, timeout=1)
    assert rec.progress == 0.3
    assert rec.progress_message == "from the child"


async def test_long_progress_messages_are_truncated(tm: TaskManager) -> None:
    async def chatty() -> None:
        report_progress(0.1, "x" * 5000)

    rec = await tm.wait(await tm.create_task(chatty()), timeout=1)
    assert rec.progress_message == "x" * 1000


async def test_progress_and_emit_outside_a_task_do_nothing(tm: TaskManager) -> None:
    started = asyncio.Event()
    task_id = await tm.create_task(forever(started))
    await started.wait()
    assert report_progress(0.5, "nobody") is None  # type: ignore[func-returns-value]
    assert emit("nobody") is None  # type: ignore[func-returns-value]
    assert emit({"a": 1}) is None  # type: ignore[func-returns-value]
    rec = await tm.get_record(task_id)
    assert rec is not None
    assert rec.progress is None
    assert rec.progress_message is None
    assert await tm.read_output(task_id) == []


@pytest.mark.parametrize("fraction", [-0.01, 1.01, 2, -1, math.nan, math.inf, -math.inf])
async def test_report_progress_refuses_fractions_out_of_range(
    tm: TaskManager, fraction: float
) -> None:
    with pytest.raises(ValueError, match="fraction"):
        report_progress(fraction)

    async def bad() -> None:
        report_progress(fraction)

    rec = await tm.wait(await tm.create_task(bad()), timeout=1)
    assert rec.status is TaskStatus.FAILED
    assert rec.error is not None
    assert rec.error.type == "ValueError"
    assert rec.progress is None


@pytest.mark.parametrize("fraction", ["0.5", None, True, False, [0.5], complex(0.5)])
def test_report_progress_refuses_non_numbers(fraction: Any) -> None:
    with pytest.raises(TypeError, match="fraction"):
        report_progress(fraction)


@pytest.mark.parametrize("fraction", [0, 0.0, 1, 1.0, 0.5])
def test_report_progress_accepts_the_bounds(fraction: float) -> None:
    report_progress(fraction)  # outside a task: checked, then ignored


@pytest.mark.parametrize("message", [1, b"bytes", ["m"]])
def test_report_progress_refuses_a_non_str_message(message: Any) -> None:
    with pytest.raises(TypeError, match="message"):
        report_progress(0.5, message)


# -- emit and read_output --------------------------------------------------------------------


async def test_emit_and_read_output(tm: TaskManager) -> None:
    release = asyncio.Event()
    task_id = await tm.create_task(
        emitting(["first", {"b": [1, 2]}, 3, None, "é"], release), user_id="alice"
    )
    await asyncio.sleep(0)
    chunks = await tm.read_output(task_id)
    assert [c.data for c in chunks] == ["first", '{"b":[1,2]}', "3", "null", "é"]
    assert [c.seq for c in chunks] == [1, 2, 3, 4, 5]
    assert all(type(c) is OutputChunk for c in chunks)
    assert all(c.at > 0 for c in chunks)
    assert [c.at for c in chunks] == sorted(c.at for c in chunks)
    release.set()
    await tm.wait(task_id, timeout=1)
    assert await tm.read_output(task_id, user_id="alice") == chunks


async def test_read_output_resumes_after_a_cursor(tm: TaskManager) -> None:
    release = asyncio.Event()

    async def producer() -> None:
        for i in range(3):
            emit(f"a{i}")
        await release.wait()
        for i in range(2):
            emit(f"b{i}")

    task_id = await tm.create_task(producer())
    await asyncio.sleep(0)
    first = await tm.read_output(task_id)
    assert [c.data for c in first] == ["a0", "a1", "a2"]
    assert await tm.read_output(task_id, after=first[-1].seq) == []
    release.set()
    await tm.wait(task_id, timeout=1)
    rest = await tm.read_output(task_id, after=first[-1].seq)
    assert [(c.seq, c.data) for c in rest] == [(4, "b0"), (5, "b1")]
    assert [c.data for c in await tm.read_output(task_id, after=1, limit=2)] == ["a1", "a2"]
    assert await tm.read_output(task_id, after=99) == []


async def test_read_output_is_bounded_by_max_output(
    make_manager: Callable[..., TaskManager],
) -> None:
    tm = make_manager(max_output=3)
    task_id = await tm.create_task(emitting([f"c{i}" for i in range(1, 11)]))
    await tm.wait(task_id, timeout=1)
    kept = await tm.read_output(task_id)
    assert [(c.seq, c.data) for c in kept] == [(8, "c8"), (9, "c9"), (10, "c10")]
    # A reader whose cursor fell behind the window resumes at the oldest kept chunk.
    assert [c.seq for c in await tm.read_output(task_id, after=2)] == [8, 9, 10]
    assert [c.seq for c in await tm.read_output(task_id, after=8)] == [9, 10]


async def test_output_is_bounded_across_several_flushes(
    make_manager: Callable[..., TaskManager],
) -> None:
    tm = make_manager(max_output=4)

    async def producer() -> None:
        for i in range(1, 21):
            emit(str(i))
            await asyncio.sleep(0)

    task_id = await tm.create_task(producer())
    await tm.wait(task_id, timeout=1)
    assert [c.data for c in await tm.read_output(task_id)] == ["17", "18", "19", "20"]


async def test_read_output_of_unknown_or_other_users_task(tm: TaskManager) -> None:
    task_id = await tm.create_task(emitting(["secret"]), user_id="alice")
    await tm.wait(task_id, timeout=1)
    with pytest.raises(TaskNotFound):
        await tm.read_output(task_id, user_id="bob")
    with pytest.raises(TaskNotFound):
        await tm.read_output("8c1b2b5e-0d6c-4f4e-9a38-7c8b9e0f1a2b")


def test_emit_outside_a_task_does_nothing_even_with_a_value_that_does_not_encode() -> None:
    assert emit(object()) is None  # type: ignore[func-returns-value]


async def test_emit_of_a_value_that_does_not_encode_raises_at_the_call(tm: TaskManager) -> None:
    """The caller's error, at the call: the task can catch it and go on."""
    caught: list[str] = []

    async def careful() -> str:
        try:
            emit({(1, 2): "tuple key"})
        except ValueNotEncodable as exc:
            caught.append(str(exc))
        emit({"when": {1, 2}})  # a set is a list by the rule
        return "went on"

    task_id = await tm.create_task(careful())
    assert await tm.result(task_id, timeout=1) == "went on"
    assert len(caught) == 1 and "output" in caught[0] and "tuple" in caught[0]
    assert [c.data for c in await tm.read_output(task_id)] == ['{"when":[1,2]}']


async def test_emit_of_a_non_json_object_inside_a_task_fails_it(tm: TaskManager) -> None:
    async def bad() -> None:
        emit(object())

    rec = await tm.wait(await tm.create_task(bad()), timeout=1)
    assert rec.status is TaskStatus.FAILED
    assert rec.error is not None
    assert rec.error.type == "ValueNotEncodable"
    assert "object" in rec.error.message
    assert await tm.read_output(rec.task_id) == []


# -- events() ---------------------------------------------------------------------------------


async def test_events_of_one_task_in_order(tm: TaskManager) -> None:
    async def work() -> str:
        report_progress(0.5, "half")
        emit("line")
        return "ok"

    async with tm.events() as stream:
        task_id = await tm.create_task(work(), "chat", user_id="alice")
        events = await drain(stream, "finished")
    assert [e.kind for e in events] == ["created", "progress", "output", "finished"]
    assert all(e.task_id == task_id for e in events)
    assert all((e.user_id, e.item_id) == ("alice", "chat") for e in events)
    created, progress, output, finished = events
    assert created.status is TaskStatus.RUNNING
    assert created.record is not None
    assert created.record.status is TaskStatus.RUNNING
    assert progress.record is not None
    assert progress.record.progress == 0.5
    assert (output.data, output.seq) == ("line", 1)
    assert finished.status is TaskStatus.COMPLETED
    assert finished.record is not None
    assert finished.record.result == "ok"
    assert [e.at for e in events] == sorted(e.at for e in events)


async def test_a_stream_opened_after_others_closed_gets_every_event(tm: TaskManager) -> None:
    """With nobody listening the manager builds no events; a new listener gets them again."""
    async with tm.events() as first:
        await tm.wait(await tm.create_task(value(1)), timeout=1)
        assert [e.kind for e in await drain(first, "finished")] == ["created", "finished"]
    await tm.wait(await tm.create_task(value(2)), timeout=1)  # nobody listens
    async with tm.events() as second, tm.events(kinds=["finished"]) as third:
        task_id = await tm.create_task(value(3))
        assert [e.kind for e in await drain(second, "finished")] == ["created", "finished"]
        assert [e.task_id for e in await drain(third, "finished")] == [task_id]
    async with tm.events() as fourth:
        task_id = await tm.create_task(value(4))
        assert [e.task_id for e in await drain(fourth, "finished")] == [task_id, task_id]


async def test_stop_requested_and_finished_events_of_a_stop(tm: TaskManager) -> None:
    started = asyncio.Event()
    async with tm.events(kinds=["stop_requested", "finished"]) as stream:
        task_id = await tm.create_task(forever(started))
        await started.wait()
        await tm.stop_task(task_id)
        events = await drain(stream, "finished")
    assert [e.kind for e in events] == ["stop_requested", "finished"]
    assert events[0].status is TaskStatus.RUNNING
    assert events[1].status is TaskStatus.CANCELLED


async def test_event_records_are_snapshots(tm: TaskManager) -> None:
    """A record carried by an event is a copy taken when it happened, for every kind."""
    started = asyncio.Event()

    async def work() -> None:
        report_progress(0.1)
        await forever(started)

    async with tm.events() as stream:
        task_id = await tm.create_task(work())
        await started.wait()
        await tm.stop_task(task_id)
        events = await drain(stream, "finished")
    with_records = [e for e in events if e.record is not None]
    assert {e.kind for e in with_records} >= {"created", "progress", "finished"}
    for event in with_records:
        assert event.record is not None
        assert type(event.record) is TaskRecord
        if event.kind != "finished":
            assert event.record.status is TaskStatus.RUNNING, event.kind
    # Mutating an event's record changes nothing in the manager.
    for event in with_records:
        assert event.record is not None
        event.record.status = TaskStatus.LOST
    rec = await tm.get_record(task_id)
    assert rec is not None
    assert rec.status is TaskStatus.CANCELLED


async def test_event_filters(tm: TaskManager) -> None:
    by_user = tm.events(user_id="alice")
    by_item = tm.events(item_id="chat-2")
    by_kind = tm.events(kinds=["finished"])
    combined = tm.events(user_id="alice", item_id="chat-2", kinds=["created"])
    a1 = await tm.create_task(value(1), "chat-1", user_id="alice")
    a2 = await tm.create_task(value(2), "chat-2", user_id="alice")
    b2 = await tm.create_task(value(3), "chat-2", user_id="bob")
    by_task = tm.events(task_id=b2)
    for task_id in (a1, a2, b2):
        await tm.wait(task_id, timeout=1)
    await asyncio.sleep(0)

    async def buffered(stream: EventStream) -> list[tuple[str, str]]:
        got: list[tuple[str, str]] = []
        while True:
            try:
                event = await next_event(stream, timeout=0.02)
            except TimeoutError:
                await stream.aclose()
                return got
            got.append((event.kind, event.task_id))

    assert await buffered(by_user) == [
        ("created", a1),
        ("created", a2),
        ("finished", a1),
        ("finished", a2),
    ]
    assert await buffered(by_item) == [
        ("created", a2),
        ("created", b2),
        ("finished", a2),
        ("finished", b2),
    ]
    assert await buffered(by_kind) == [("finished", a1), ("finished", a2), ("finished", b2)]
    assert await buffered(combined) == [("created", a2)]
    assert await buffered(by_task) == [("finished", b2)]  # subscribed after its creation


async def test_events_are_delivered_to_an_async_for_reader(tm: TaskManager) -> None:
    got: list[str] = []
    stream = tm.events(kinds=["finished"])

    async def reader() -> None:
        async for event in stream:
            got.append(event.task_id)  # noqa: PERF401 - read while the loop runs

    reading = asyncio.create_task(reader())
    ids = [await tm.create_task(value(i)) for i in range(3)]
    for task_id in ids:
        await tm.wait(task_id, timeout=1)
    await asyncio.sleep(0.01)
    assert got == ids
    await stream.aclose()
    async with asyncio.timeout(1):
        await reading  # aclose ends the iteration
    await stream.aclose()  # idempotent


async def test_aclose_ends_a_waiting_reader_and_stops_delivery(tm: TaskManager) -> None:
    stream = tm.events()
    waiting = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        async with asyncio.timeout(1):
            await waiting
    await tm.wait(await tm.create_task(value(1)), timeout=1)
    with pytest.raises(StopAsyncIteration):
        await next_event(stream)


async def test_a_slow_reader_loses_the_oldest_events(tm: TaskManager) -> None:
    async with tm.events(kinds=["output"], maxsize=3) as stream:
        task_id = await tm.create_task(emitting([f"line{i}" for i in range(1, 11)]))
        await tm.wait(task_id, timeout=1)
        assert stream.dropped == 7
        kept = [await next_event(stream) for _ in range(3)]
    assert [e.data for e in kept] == ["line8", "line9", "line10"]
    assert [e.seq for e in kept] == [8, 9, 10]


@pytest.mark.parametrize("kinds", [["created", "bogus"], ["Finished"], "created", [""]])
async def test_events_refuses_unknown_kinds(tm: TaskManager, kinds: Any) -> None:
    with pytest.raises(ValueError, match="kind"):
        tm.events(kinds=kinds)


async def test_events_of_a_closed_manager(make_manager: Callable[..., TaskManager]) -> None:
    tm = make_manager()
    stream = tm.events()
    await tm.wait(await tm.create_task(value(1)), timeout=1)
    reading: list[str] = []

    async def reader() -> None:
        reading.extend([event.kind async for event in stream])

    task = asyncio.create_task(reader())
    await tm.aclose()
    async with asyncio.timeout(1):
        await task  # the manager closing ends iteration after the buffer
    assert reading == ["created", "finished"]
    with pytest.raises(ManagerClosed):
        tm.events()


async def test_events_of_other_instances_arrive_through_the_bus(
    peers: Peers,
) -> None:
    a, b = peers(), peers()
    await b.start()

    async def work() -> str:
        report_progress(0.5)
        emit("hello")
        return "ok"

    async with b.events(user_id="alice") as stream:
        await a.create_task(value(0), user_id="bob")  # filtered out: bob's
        task_id = await a.create_task(work(), user_id="alice")
        events = await drain(stream, "finished")
    # Other instances get each flush's events coalesced: a task that finished
    # within one flush is told by its output and its finished event (with the
    # whole record); its created and progress events add nothing.
    kinds = [e.kind for e in events]
    assert kinds[-2:] == ["output", "finished"]
    assert set(kinds) <= {"created", "progress", "output", "finished"}
    assert {e.task_id for e in events} == {task_id}  # bob's task is filtered out
    assert events[-1].record is not None
    assert events[-1].record.result == "ok"


async def test_events_with_a_spawned_coroutine(tm: TaskManager) -> None:
    """`created` comes before anything the task itself does."""

    def job() -> Coroutine[Any, Any, str]:
        async def inner() -> str:
            emit("early")
            return "x"

        return inner()

    async with tm.events(kinds=["created", "output"]) as stream:
        await tm.create_task(job())
        first, second = await next_event(stream), await next_event(stream)
    assert (first.kind, second.kind) == ("created", "output")


async def test_remote_events_of_a_long_task_arrive_in_order(
    peers: Peers,
) -> None:
    a, b = peers(), peers()
    await b.start()
    step = asyncio.Event()

    async def work() -> str:
        await step.wait()
        report_progress(0.5)
        await asyncio.sleep(0.01)
        return "ok"

    async with b.events() as stream:
        task_id = await a.create_task(work())
        first = await anext(stream)
        step.set()
        rest = await drain(stream, "finished")
    assert (first.kind, first.task_id) == ("created", task_id)
    assert [e.kind for e in rest] == ["progress", "finished"]
    assert rest[0].record is not None and rest[0].record.progress == 0.5


def test_coalesce_keeps_what_a_batch_does_not_supersede() -> None:
    from taskward._records import TaskEvent, TaskStatus
    from taskward._sync import coalesce

    def ev(kind: str, task_id: str) -> TaskEvent:
        return TaskEvent(kind, task_id, TaskStatus.RUNNING, 0.0)

    batch = [
        ev("created", "a"),
        ev("progress", "a"),
        ev("output", "a"),
        ev("finished", "a"),
        ev("created", "b"),
        ev("progress", "b"),
        ev("progress", "b"),
        ev("stop_requested", "b"),
    ]
    assert [(e.kind, e.task_id) for e in coalesce(batch)] == [
        ("output", "a"),
        ("finished", "a"),
        ("created", "b"),
        ("progress", "b"),
        ("stop_requested", "b"),
    ]
    assert coalesce(batch)[3] is batch[6]  # the last progress of b


async def test_a_child_task_that_outlives_its_task_cannot_change_the_record(
    tm: TaskManager,
) -> None:
    """A child asyncio task inherits the current task; once that task is finished,
    its progress and output are ignored (its record and its stream are final)."""
    go_on, finished_child = asyncio.Event(), asyncio.Event()

    async def child() -> None:
        await go_on.wait()
        report_progress(0.5, "too late")  # finished: ignored
        emit("too late")
        await tm.records(limit=1)  # written and forgotten by the manager
        emit("later still")  # dropped too, not an error
        finished_child.set()

    async def parent() -> str:
        keep.append(asyncio.create_task(child()))
        return "done"

    keep: list[asyncio.Task[None]] = []
    task_id = await tm.create_task(parent())
    assert await tm.result(task_id, timeout=2) == "done"
    go_on.set()
    await asyncio.wait_for(finished_child.wait(), 2)
    rec = await tm.get_record(task_id)
    assert rec is not None
    assert (rec.status, rec.progress, rec.progress_message) == (TaskStatus.COMPLETED, None, None)
    assert await tm.read_output(task_id) == []
