"""Who is asking: `Caller`, and the user filter every read and stop applies."""

from __future__ import annotations

from dataclasses import dataclass

from ._ids import check_id

__all__ = ["Caller", "scope_of"]


@dataclass(frozen=True, slots=True)
class Caller:
    """The user a surface (HTTP, MCP, a tool call) acts for.

    A caller that is not an admin sees, waits for, stops and lists only its own
    tasks: another user's task answers exactly like a missing one. An admin sees
    every task.
    """

    user_id: str
    admin: bool = False

    def __post_init__(self) -> None:
        check_id(self.user_id, "user_id")
        if not isinstance(self.admin, bool):
            raise TypeError(f"admin must be a bool, not {type(self.admin).__name__}")

    @property
    def sees(self) -> str | None:
        """The user whose tasks this caller sees; None for all (an admin)."""
        return None if self.admin else self.user_id


def scope_of(user_id: str | None, caller: Caller | None) -> str | None:
    """The user filter of a read or stop: `caller=`'s, or `user_id=` (None: every task).

    `user_id=` keeps the meaning the prior systems gave it ("set: only that
    user's tasks"); new code passes a `Caller`.
    """
    if caller is None:
        return None if user_id is None else check_id(user_id, "user_id")
    if not isinstance(caller, Caller):
        raise TypeError(f"caller must be a Caller, not {type(caller).__name__}")
    if user_id is not None:
        raise ValueError("pass caller= or user_id=, not both")
    return caller.sees
