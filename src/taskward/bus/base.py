"""The Bus protocol: how instances wake each other.

Two kinds of message travel on a bus:

- *commands* go to one instance (its owner inbox), e.g. ``{"op": "stop",
  "task_id": ...}``. They are wake-ups only: the durable truth (the stop request)
  is already in the store when a command is sent, and owners re-read it on a
  timer and after every reconnect, so a lost command delays, never loses.
- *events* go to every instance: a list of `TaskEvent` per publish (one flush of
  one instance), for waiters on other instances and `TaskManager.events()`.

Handlers are plain callables run on the event loop; they must not block.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from .._records import TaskEvent

__all__ = ["Bus", "BusHandlers", "CommandHandler", "EventHandler", "ReconnectHandler"]

CommandHandler = Callable[[dict[str, Any]], None]
EventHandler = Callable[[Sequence[TaskEvent]], None]
ReconnectHandler = Callable[[], Awaitable[None]]


class BusHandlers(Protocol):
    """What a bus calls back into: the manager implements this."""

    def on_command(self, command: dict[str, Any]) -> None:
        """A command sent to this instance arrived."""

    def on_events(self, events: Sequence[TaskEvent]) -> None:
        """Events published by another instance arrived (never our own)."""

    def wants_events(self) -> bool:
        """Whether anyone here listens to remote events now (lets a bus skip decoding)."""

    async def on_reconnect(self) -> None:
        """The bus lost its connection and has it back: messages may have been missed."""


class Bus(Protocol):
    """Transport for commands and events between instances."""

    async def start(self, instance_id: str, handlers: BusHandlers) -> None:
        """Start listening for this instance's commands and for everyone's events.

        Returns once subscribed, so a message published after `start` returns is
        delivered.
        """

    async def aclose(self) -> None:
        """Stop listening. Idempotent."""

    def has_peers(self) -> bool:
        """Whether a publish can reach anyone (False for a bus alone in its process)."""

    async def publish(self, events: Sequence[TaskEvent]) -> None:
        """Send events to every other instance (one message for the whole list)."""

    async def send_command(self, instance_id: str, command: dict[str, Any]) -> None:
        """Send a command to one instance. Never raises for an unknown or dead instance."""
