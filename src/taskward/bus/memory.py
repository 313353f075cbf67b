"""The in-process bus: commands and events between managers of one process."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._records import TaskEvent
    from .base import BusHandlers

__all__ = ["MemoryBus", "MemoryHub"]


class MemoryHub:
    """The meeting point of the `MemoryBus`es of one process."""

    def __init__(self) -> None:
        self.members: dict[str, BusHandlers] = {}


class MemoryBus:
    """A `Bus` within one process: one per manager, joined through a `MemoryHub`.

    Managers that should see each other (sharing one `MemoryStore`) get buses on
    the same hub. Delivery is scheduled on the loop, as it would be over a
    network, so a handler never runs inside the sender's call.
    """

    def __init__(self, hub: MemoryHub | None = None) -> None:
        # A hub passed in is meant to be shared: behave as if peers were there
        # from the start, so managers started later still see everything.
        self._shared = hub is not None
        self._hub = hub if hub is not None else MemoryHub()
        self._instance_id: str | None = None

    async def start(self, instance_id: str, handlers: BusHandlers) -> None:
        if self._instance_id is not None:
            raise RuntimeError("this bus is already started")
        if instance_id in self._hub.members:
            raise ValueError(f"instance {instance_id!r} is already on this hub")
        self._hub.members[instance_id] = handlers
        self._instance_id = instance_id

    async def aclose(self) -> None:
        if self._instance_id is not None:
            self._hub.members.pop(self._instance_id, None)

    def has_peers(self) -> bool:
        return self._shared or len(self._hub.members) > 1

    async def publish(self, events: Sequence[TaskEvent]) -> None:
        members = self._hub.members
        if not events or len(members) < 2:
            return
        loop = asyncio.get_running_loop()
        snapshot: list[TaskEvent] | None = None
        for instance_id, handlers in members.items():
            if instance_id != self._instance_id and handlers.wants_events():
                if snapshot is None:  # as if sent over a wire: nobody shares our objects
                    snapshot = [
                        e if e.record is None else replace(e, record=e.record.copy())
                        for e in events
                    ]
                loop.call_soon(handlers.on_events, snapshot)

    async def send_command(self, instance_id: str, command: dict[str, Any]) -> None:
        handlers = self._hub.members.get(instance_id)
        if handlers is not None:
            asyncio.get_running_loop().call_soon(handlers.on_command, dict(command))
