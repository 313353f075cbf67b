"""Task coroutines and checks shared by the in-process `TaskManager` tests.

Imported as ``from helpers import ...`` (``tests/`` is on ``sys.path``, as for
``servers``); the fixtures that go with them (`make_manager`, `tm`, `peers`) are in
``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import gc
import math
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from taskward._live import from_record
from taskward.bus.memory import MemoryBus, MemoryHub
from taskward.stores.base import WriteBatch
from taskward.stores.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from taskward import OutputChunk, TaskManager, TaskRecord
    from taskward._live import Live

__all__ = [
    "Peers",
    "batch",
    "blocked",
    "fail",
    "forever",
    "lives",
    "memory_indexes",
    "memory_sizes",
    "no_unawaited_coroutines",
    "swallow",
    "value",
]


async def value(x: Any) -> Any:
    return x


async def blocked(release: asyncio.Event, result: Any = "released") -> Any:
    """`result`, once `release` is set."""
    await release.wait()
    return result


async def forever(started: asyncio.Event | None = None) -> None:
    """Sets `started` (if given) and runs until cancelled."""
    if started is not None:
        started.set()
    await asyncio.Event().wait()


async def fail(message: str) -> None:
    """Raises `RuntimeError(message)` after one suspension."""
    await asyncio.sleep(0)
    raise RuntimeError(message)


async def swallow(started: asyncio.Event, release: asyncio.Event, times: float = math.inf) -> str:
    """Swallow the first `times` cancellations (all, by default), then let them through;
    end on `release`."""
    started.set()
    swallowed = 0
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            swallowed += 1
            if swallowed > times:
                raise
    return "released"


@contextmanager
def no_unawaited_coroutines() -> Iterator[None]:
    """Fail if a coroutine was garbage collected without being awaited or closed,
    or a task ended on an error nobody retrieved (the loop's exception handler)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
            gc.collect()
    finally:
        loop.set_exception_handler(previous)
    unawaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert unawaited == []
    assert [context["message"] for context in errors] == []


class Peers:
    """Managers (instances) sharing one `MemoryStore` and one `MemoryHub`.

    ``peers(**options)`` makes one with `make_manager` (so it is closed after the
    test), on `store` and a bus of its own on the shared hub.
    """

    def __init__(self, make_manager: Callable[..., TaskManager]) -> None:
        self.store = MemoryStore()
        self.hub = MemoryHub()
        self._make_manager = make_manager

    def __call__(self, **options: Any) -> TaskManager:
        return self._make_manager(store=self.store, bus=MemoryBus(self.hub), **options)


def batch(
    records: Iterable[TaskRecord] = (),
    outputs: dict[str, list[OutputChunk]] | None = None,
    now: float = 0.0,
    notice: str | None = None,
) -> WriteBatch:
    """A store write of `records` as an owner's flush passes them: live records."""
    return WriteBatch([from_record(rec) for rec in records], outputs or {}, now, notice)


def lives(records: Iterable[TaskRecord]) -> list[Live]:
    """`records` as an owner's live records (for `Store.heartbeat`)."""
    return [from_record(rec) for rec in records]


def memory_indexes(store: MemoryStore) -> dict[str, dict[str, list[str]]]:
    """The task ids each index of a memory store holds, oldest first, by index kind
    and key (``"all"`` has the one key ``""``); departed entries left out."""

    def ids(index: Any) -> list[str]:
        return [store._at[p] for p in index.positions if p not in index.departed]

    return {
        "all": {"": ids(store._all)},
        "status": {status: ids(index) for status, index in store._by_status.items()},
        "user": {user: ids(index) for user, index in store._by_user.items()},
        "item": {item: ids(index) for item, index in store._by_item.items()},
    }


def memory_sizes(store: MemoryStore) -> dict[str, int]:
    """Entries in every per-task structure of a memory store. An index counts what it
    holds (``by_user``...) and, under ``..._held``, the entries its lists keep, the
    departed ones included (a bounded number: see `taskward.stores.memory`)."""
    users = store._by_user.values()
    items = store._by_item.values()
    statuses = store._by_status.values()
    return {
        "records": len(store),
        "order": len(store._order),
        "positions": len(store._at),
        "finished": len(store._finished),
        "outputs": len(store._outputs),
        "all": len(store._all),
        "all_held": len(store._all.positions),
        "by_status": sum(len(index) for index in statuses),
        "by_status_held": sum(len(index.positions) for index in statuses),
        "by_user": sum(len(index) for index in users),
        "by_user_held": sum(len(index.positions) for index in users),
        "by_item": sum(len(index) for index in items),
        "by_item_held": sum(len(index.positions) for index in items),
        "stops": sum(len(ids) for ids in store._stops.values()),
        "user_keys": len(store._by_user),
        "item_keys": len(store._by_item),
    }
