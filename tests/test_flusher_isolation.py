"""The flusher never dies: a record the store refuses fails its own task with the
reason, every other record of the batch is written, and later tasks are written
as before. Two instances share one store here, so what is written is what the
other instance reads."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import pytest

from helpers import value
from taskward import TaskManager, TaskStatus, emit
from taskward.bus.memory import MemoryBus, MemoryHub
from taskward.stores.base import RESULT
from taskward.stores.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import Callable

    from taskward.stores.base import WriteBatch


class PickyStore(MemoryStore):
    """A store with a bug: it refuses any batch holding the result "poison"."""

    def save_now(self, batch: WriteBatch) -> None:
        if any(row[RESULT] == "poison" for row in batch.records):
            raise RuntimeError("cannot store this one")
        super().save_now(batch)


@pytest.fixture
def two(make_manager: Callable[..., TaskManager]) -> tuple[TaskManager, TaskManager]:
    store, hub = PickyStore(), MemoryHub()
    return (
        make_manager(store=store, bus=MemoryBus(hub)),
        make_manager(store=store, bus=MemoryBus(hub)),
    )


async def chatty(text: str) -> str:
    emit(text)
    return text


async def test_a_refused_record_fails_alone_and_the_batch_is_written(
    two: tuple[TaskManager, TaskManager], caplog: pytest.LogCaptureFixture
) -> None:
    owner, other = two
    await other.start()
    caplog.set_level(logging.ERROR, "taskward")
    # One loop turn, one flush: the poison among good ones.
    good = [await owner.create_task(chatty(f"ok {i}")) for i in range(5)]
    bad = await owner.create_task(value("poison"))
    good += [await owner.create_task(chatty(f"ok {i}")) for i in range(5, 10)]
    await asyncio.sleep(0.05)
    assert [await other.result(t, timeout=2) for t in good] == [f"ok {i}" for i in range(10)]
    assert [c.data for c in await other.read_output(good[3])] == ["ok 3"]
    for reader in (owner, other):
        rec = await reader.wait(bad, timeout=2)
        assert rec.status is TaskStatus.FAILED and rec.error is not None
        assert rec.error.type == "StoreWriteError"
        assert "cannot store this one" in rec.error.message
    assert f"task {bad}: the store refused its record" in caplog.text
    # The flusher lives on: later tasks are written and read elsewhere.
    later = await owner.create_task(value("later"))
    assert await other.result(later, timeout=2) == "later"


async def test_an_unexpected_error_in_a_flush_is_logged_and_the_next_flush_goes_on(
    make_manager: Callable[..., TaskManager],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, hub = MemoryStore(), MemoryHub()
    owner = make_manager(store=store, bus=MemoryBus(hub))
    other = make_manager(store=store, bus=MemoryBus(hub))
    await other.start()
    await owner.start()
    calls: list[Any] = []

    def broken_forget(rows: Any) -> None:  # a bug after the write: ids get logged
        calls.append(rows)
        raise KeyError("a bug")

    monkeypatch.setattr(owner._flusher, "_written", broken_forget)
    first = await owner.create_task(value(1))
    await asyncio.sleep(0.05)
    assert calls, "the flush ran"
    assert f"a flush failed unexpectedly (tasks {first}" in caplog.text
    monkeypatch.undo()
    second = await owner.create_task(value(2))
    assert await other.result(second, timeout=2) == 2
    assert await other.result(first, timeout=2) == 1  # it was written before the bug
