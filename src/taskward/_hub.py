"""The event hub: local event streams, waits for other instances' tasks, the bus callbacks.

Events are wake-ups, never answers: a `finished` event from the bus only wakes
the waits registered for that task, which then read the record from the store
(a forged or early event can cost a read, never a wrong answer).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ._events import EventStream
from ._live import event_of, snapshot

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

    from ._live import Live
    from ._records import TaskEvent

__all__ = ["BusEndpoint", "EventHub"]


class EventHub:
    """Fans events out to this instance's streams and, through the flusher, to the bus.

    `alone` says nobody but this instance can ever hear of its tasks (its own
    store and bus in memory): events are then built only for local streams, and
    `quiet` says when there are none either (callers skip `emit` then).
    """

    def __init__(
        self,
        *,
        queue_event: Callable[[TaskEvent], None],
        has_peers: Callable[[], bool],
        alone: bool,
    ) -> None:
        self.streams: list[EventStream] = []
        self.quiet = alone  # nobody listens: no event needs to be made
        self._queue_event = queue_event
        self._has_peers = has_peers
        self._alone = alone
        # Futures of waits and stops for tasks of other instances, by task id.
        self._remote: dict[str, list[asyncio.Future[None]]] = {}

    def emit(
        self, kind: str, row: Live, at: float, data: str | None = None, seq: int | None = None
    ) -> None:
        """Tell local streams now and other instances at the next flush.

        Events other than `output` carry a snapshot of the record; local streams
        and the bus each get their own.
        """
        if self.quiet:
            return
        streams = self.streams
        with_record = data is None
        if streams:
            event = event_of(kind, row, at, snapshot(row) if with_record else None, data, seq)
            for stream in streams:
                if stream.matches(event):
                    stream.push(event)
        if self._has_peers():
            self._queue_event(
                event_of(kind, row, at, snapshot(row) if with_record else None, data, seq)
            )

    def publish(self, events: Sequence[TaskEvent]) -> None:
        """Events made here about other instances' tasks (the reaper's): to all."""
        self.deliver(events)
        if self._has_peers():
            for event in events:
                self._queue_event(event)

    def deliver(self, events: Sequence[TaskEvent]) -> None:
        """Events from the bus: wake the waits of finished tasks, feed the streams."""
        remote = self._remote
        for event in events:
            if event.kind == "finished" and event.task_id in remote:
                for fut in remote.pop(event.task_id):
                    if not fut.done():
                        fut.set_result(None)
            for stream in self.streams:
                if stream.matches(event):
                    stream.push(event)

    def wants_events(self) -> bool:
        return bool(self.streams or self._remote)

    def wait_remote(self, task_id: str) -> asyncio.Future[None]:
        """A future set when a `finished` event for `task_id` arrives (a wake-up only)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._remote.setdefault(task_id, []).append(fut)
        return fut

    def unwait(self, task_id: str, fut: asyncio.Future[None]) -> None:
        """Take `fut` off the waits for `task_id`."""
        futs = self._remote.get(task_id)
        if futs is not None:
            if fut in futs:
                futs.remove(fut)
            if not futs:
                del self._remote[task_id]

    def open_stream(
        self,
        *,
        task_id: str | None,
        user_id: str | None,
        item_id: str | None,
        kinds: Iterable[str] | None,
        maxsize: int,
    ) -> EventStream:
        stream = EventStream(
            task_id=task_id,
            user_id=user_id,
            item_id=item_id,
            kinds=kinds,
            maxsize=maxsize,
            on_close=self._drop_stream,
        )
        self.streams.append(stream)
        self.quiet = False
        return stream

    def _drop_stream(self, stream: EventStream) -> None:
        if stream in self.streams:
            self.streams.remove(stream)
        self.quiet = self._alone and not self.streams

    def close_streams(self) -> None:
        for stream in self.streams:
            stream.close_from_manager()
        self.streams.clear()
        self.quiet = self._alone


class BusEndpoint:
    """The `BusHandlers` a manager gives its bus: events to the hub, commands and reconnects to their owners."""

    __slots__ = ("_hub", "_on_command", "_on_reconnect")

    def __init__(
        self,
        hub: EventHub,
        on_command: Callable[[dict[str, Any]], None],
        on_reconnect: Callable[[], Awaitable[None]],
    ) -> None:
        self._hub = hub
        self._on_command = on_command
        self._on_reconnect = on_reconnect

    def wants_events(self) -> bool:
        return self._hub.wants_events()

    def on_events(self, events: Sequence[TaskEvent]) -> None:
        self._hub.deliver(events)

    def on_command(self, command: dict[str, Any]) -> None:
        self._on_command(command)

    async def on_reconnect(self) -> None:
        await self._on_reconnect()
