"""One bad task must never silence an instance: values that do not encode, lone
surrogates, oversized values and records a store refuses, with two managers on a
real server. Each bad value fails its own task (or is cleaned), the instance
keeps writing, and the other instance reads the same thing the owner does."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
from typing import TYPE_CHECKING, Any

import pytest

from helpers import blocked, value
from taskward import StopOutcome, TaskFailed, TaskManager, TaskStatus, emit, report_progress

if TYPE_CHECKING:
    from collections.abc import Callable

    from distributed_helpers import ManagerFactory, WorkerPool

pytestmark = pytest.mark.redis


@pytest.fixture
def pair(
    make_manager: Callable[..., TaskManager], redis_url: str, key_prefix: str
) -> tuple[TaskManager, TaskManager]:
    def one(**options: Any) -> TaskManager:
        return make_manager(redis=redis_url, prefix=key_prefix, stop_timeout=3.0, **options)

    return one(), one()


def circular() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("bad", "why"),
    [({(1, 2): "x"}, "tuple"), (circular(), "circular"), (object(), "object")],
    ids=["tuple-keys", "circular-list", "opaque-object"],
)
async def test_a_result_that_does_not_encode_fails_its_task_and_the_instance_writes_on(
    pair: tuple[TaskManager, TaskManager], bad: Any, why: str
) -> None:
    owner, other = pair
    await other.start()
    poisoned = await owner.create_task(value(bad))
    for reader in (owner, other):  # the same answer on both instances
        rec = await reader.wait(poisoned, timeout=5)
        assert rec.status is TaskStatus.FAILED
        assert rec.error is not None and rec.error.type == "ValueNotEncodable"
        assert why in rec.error.message
    # The owner's writes go on: a later task is seen finished elsewhere, a running
    # one is seen running and can be stopped from the other instance.
    later = await owner.create_task(value("fine"))
    assert await other.result(later, timeout=5) == "fine"
    release = asyncio.Event()
    running = await owner.create_task(blocked(release))
    seen = await other.get_record(running)
    assert seen is not None and seen.status is TaskStatus.RUNNING
    assert (await other.stop_task(running)).outcome is StopOutcome.CANCELLED


async def test_lone_surrogates_are_replaced_and_lose_no_task_of_the_batch(
    pair: tuple[TaskManager, TaskManager],
) -> None:
    owner, other = pair
    await other.start()
    bad_name = os.fsdecode(b"report-\xff.txt")  # 'report-\udcff.txt'
    assert "\udcff" in bad_name

    async def surrogates() -> dict[str, str]:
        report_progress(0.5, bad_name)
        emit(bad_name)
        return {bad_name: bad_name}

    async def raises() -> None:
        raise OSError(f"cannot open {bad_name}")

    # All of them finish in the same loop turn: one flush, one batch.
    ids = [await owner.create_task(surrogates())]
    ids += [await owner.create_task(raises())]
    ids += [await owner.create_task(value(i)) for i in range(20)]
    cleaned = "report-\ufffd.txt"
    for reader in (owner, other):
        assert await reader.result(ids[0], timeout=5) == {cleaned: cleaned}
        rec = await reader.wait(ids[0], timeout=5)
        assert rec.progress_message == cleaned
        assert [c.data for c in await reader.read_output(ids[0])] == [cleaned]
        with pytest.raises(TaskFailed) as failed:
            await reader.result(ids[1], timeout=5)
        assert failed.value.error is not None
        assert failed.value.error.message == f"cannot open {cleaned}"
        assert [await reader.result(i, timeout=5) for i in ids[2:]] == list(range(20))


async def test_a_value_over_the_size_limit_fails_its_task_and_a_message_is_cut(
    make_manager: Callable[..., TaskManager], redis_url: str, key_prefix: str
) -> None:
    owner = make_manager(redis=redis_url, prefix=key_prefix, max_value_size=1000)
    other = make_manager(redis=redis_url, prefix=key_prefix)
    huge = await owner.create_task(value("x" * 5000))

    async def loud() -> None:
        raise ValueError("y" * 5000)

    cut = await owner.create_task(loud())
    for reader in (owner, other):
        rec = await reader.wait(huge, timeout=5)
        assert rec.status is TaskStatus.FAILED and rec.error is not None
        assert rec.error.type == "ValueNotEncodable"
        assert "over the limit" in rec.error.message
        rec = await reader.wait(cut, timeout=5)
        assert rec.error is not None and rec.error.type == "ValueError"
        assert len(rec.error.message.encode()) <= 1000
        assert "truncated" in rec.error.message


async def test_output_over_the_size_limit_raises_at_the_call(
    make_manager: Callable[..., TaskManager], redis_url: str, key_prefix: str
) -> None:
    owner = make_manager(redis=redis_url, prefix=key_prefix, max_value_size=100)

    async def chatty() -> str:
        with pytest.raises(ValueError, match="over the limit"):
            emit("z" * 500)
        emit("short")
        return "went on"

    task_id = await owner.create_task(chatty())
    assert await owner.result(task_id, timeout=5) == "went on"
    assert [c.data for c in await owner.read_output(task_id)] == ["short"]


@dataclasses.dataclass
class Point:
    x: int
    y: int


async def test_an_applications_own_types_through_the_encoder_hook(
    make_manager: Callable[..., TaskManager], redis_url: str, key_prefix: str
) -> None:
    def encode(obj: object) -> object:
        if isinstance(obj, complex):
            return [obj.real, obj.imag]
        raise TypeError(f"no rule for {type(obj).__name__}")

    owner = make_manager(redis=redis_url, prefix=key_prefix, encoder=encode)
    other = make_manager(redis=redis_url, prefix=key_prefix)
    task_id = await owner.create_task(value({"z": 1 + 2j, "p": Point(1, 2)}))
    expected = {"z": [1.0, 2.0], "p": {"x": 1, "y": 2}}
    assert await owner.result(task_id, timeout=5) == expected
    assert await other.result(task_id, timeout=5) == expected
    refused = await owner.create_task(value(b"bytes"))
    rec = await other.wait(refused, timeout=5)
    assert rec.error is not None and "no rule for bytes" in rec.error.message


async def test_metadata_that_does_not_encode_is_refused_at_creation(
    pair: tuple[TaskManager, TaskManager],
) -> None:
    owner, _ = pair
    coro = value(1)
    with pytest.raises(ValueError, match="metadata"):
        await owner.create_task(coro, metadata={"when": object()})
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # nothing half-started


async def test_an_instance_process_writes_on_after_a_result_that_does_not_encode(
    pool: WorkerPool, start_manager: ManagerFactory
) -> None:
    """The owner is another process: its unencodable result and its lone surrogate
    are read here as it recorded them, and it goes on writing tasks after them."""
    worker = await pool.launch("poisoned-worker")
    here = await start_manager("reader")
    bad = await worker.create("unencodable")
    odd = await worker.create("surrogate")
    rec = await here.wait(bad, timeout=10)
    assert rec.status is TaskStatus.FAILED and rec.error is not None
    assert rec.error.type == "ValueNotEncodable" and "tuple" in rec.error.message
    assert await here.result(odd, timeout=10) == "report-\ufffd.txt"
    later = await worker.burst(20, "noop", result="fine")
    assert [await here.result(t, timeout=10) for t in later] == ["fine"] * 20
    running = await worker.create("sleep", seconds=30)
    assert (await here.stop_task(running)).outcome is StopOutcome.CANCELLED
