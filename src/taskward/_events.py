"""Subscriptions to task events: what `TaskManager.events()` returns."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType

    from ._records import TaskEvent

__all__ = ["EVENT_KINDS", "EventStream"]

logger = logging.getLogger(__name__)

EVENT_KINDS = frozenset({"created", "progress", "output", "finished", "stop_requested"})


class EventStream:
    """An async iterator of `TaskEvent`s matching its filters.

    Use it as ``async with tm.events(user_id="u1") as stream: async for ev in
    stream: ...`` (or call `aclose()`), so the manager stops feeding it. It holds
    at most `maxsize` undelivered events; when a reader falls behind, the oldest
    are dropped and `dropped` counts them.
    """

    def __init__(
        self,
        *,
        task_id: str | None,
        user_id: str | None,
        item_id: str | None,
        kinds: Iterable[str] | None,
        maxsize: int,
        on_close: Callable[[EventStream], None],
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        chosen = frozenset(kinds) if kinds is not None else EVENT_KINDS
        unknown = chosen - EVENT_KINDS
        if unknown:
            raise ValueError(f"unknown event kinds {sorted(unknown)}; known: {sorted(EVENT_KINDS)}")
        self._task_id = task_id
        self._user_id = user_id
        self._item_id = item_id
        self._kinds = chosen
        self._buffer: deque[TaskEvent] = deque(maxlen=maxsize)
        self._wakeup: asyncio.Future[None] | None = None
        self._on_close = on_close
        self._closed = False
        self.dropped = 0

    def matches(self, event: TaskEvent) -> bool:
        return (
            event.kind in self._kinds
            and (self._task_id is None or event.task_id == self._task_id)
            and (self._user_id is None or event.user_id == self._user_id)
            and (self._item_id is None or event.item_id == self._item_id)
        )

    def push(self, event: TaskEvent) -> None:
        """Queue an event (called by the manager for events that match)."""
        if self._closed:
            return
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("event stream reader is behind: %d events dropped", self.dropped)
        self._buffer.append(event)
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> TaskEvent:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        return self._buffer.popleft()

    async def aclose(self) -> None:
        """Stop receiving; a reader waiting in `async for` ends. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._on_close(self)
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close_from_manager(self) -> None:
        """The manager is closing: end iteration once the buffer is drained."""
        self._closed = True
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
