"""Reading and waiting: a task's record and outcome, wherever the task runs.

A read looks here first (the local table, then a store in this process, which
answer without I/O), then in the store. A wait for a task running here is
woken by its own end; for another instance's task by its `finished` event,
after which the record is read from the store (the event only wakes), with a
slow re-read as a safety net for a lost event.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ._ids import check_id
from ._live import RESULT, STATUS, TASK_ID, USER_ID, V_COMPLETED, V_RUNNING, outcome
from ._records import TaskStatus
from .errors import StoreUnavailable, TaskFailed, TaskNotFound, TaskTimeout
from .stores.base import InProcessStore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._hub import EventHub
    from ._live import Live
    from ._records import TaskRecord
    from ._table import LocalTable
    from .stores.base import Store

__all__ = ["WAIT_POLL", "Reader"]


# A wait for another instance's task re-reads the store this often (s), in case
# its `finished` event was lost.
WAIT_POLL = 2.0
# Ids of tasks with a redirect that a reader remembers (their records are read
# from the store, which owns the redirect and its delivery state).
REDIRECTED_LIMIT = 10_000


class Reader:
    """Reads and waits of one manager. `ready()` starts the manager if it is not yet."""

    def __init__(
        self,
        *,
        table: LocalTable,
        store: Store,
        hub: EventHub,
        ready: Callable[[], Awaitable[None]],
        unavailable: Callable[[BaseException], None],
    ) -> None:
        self._table = table
        self._store = store
        self._hub = hub
        self._ready = ready
        self._unavailable = unavailable
        self._in_process: InProcessStore | None = (
            store if isinstance(store, InProcessStore) else None
        )
        self._redirected: OrderedDict[str, None] = OrderedDict()

    def note_redirect(self, task_id: str) -> None:
        """A redirect was set on this task: this instance's copies of its record do not
        carry it (the store owns it), so `lookup` reads the store's."""
        self._redirected[task_id] = None
        self._redirected.move_to_end(task_id)
        while len(self._redirected) > REDIRECTED_LIMIT:
            self._redirected.popitem(last=False)

    def peek(self, task_id: str, user_id: str | None) -> TaskRecord | None:
        """The record if it can be had without I/O (local, or an in-process store).

        Like every read here, the record is a fresh one: the caller's to keep.
        """
        rec = self._table.peek(task_id)
        if rec is None and self._in_process is not None:
            rec = self._in_process.peek(task_id)
        if rec is None or (user_id is not None and rec.user_id != user_id):
            return None
        return rec

    def redirects_among(self, rows: list[Live]) -> bool:
        """Whether a terminal row among `rows` is of a task redirected through here."""
        redirected = self._redirected
        return bool(redirected) and any(
            row[TASK_ID] in redirected for row in rows if row[STATUS] != V_RUNNING
        )

    async def lookup(self, task_id: str, user_id: str | None) -> TaskRecord | None:
        """The task's record, fresh (local or from the store); None if not visible."""
        if task_id in self._redirected:
            rec = self._in_process.peek(task_id) if self._in_process is not None else None
        else:
            rec = self.peek(task_id, None)
        if rec is None and self._in_process is None:
            try:
                rec = await self._store.get(task_id)
            except StoreUnavailable as exc:
                self._unavailable(exc)  # creations stop waiting for the store
                raise
        if rec is None or (user_id is not None and rec.user_id != user_id):
            return None
        return rec

    async def wait(self, task_id: str, timeout: float | None, user_id: str | None) -> TaskRecord:
        if timeout is None:
            # Already terminal (the common case), or running here: waited for here,
            # with one record made at the end.
            if self._table.runs_here(task_id, user_id):
                await self._table.add_waiter(task_id)
            rec = self.peek(task_id, user_id)
            if rec is not None and rec.status is not TaskStatus.RUNNING:
                return rec
        return await self._terminal(task_id, timeout, user_id)

    async def result(self, task_id: str, timeout: float | None, user_id: str | None) -> Any:
        if timeout is None:  # a finished task's outcome, without making a record
            row = self._table.rows.get(task_id)
            if (
                row is not None
                and row[STATUS] == V_RUNNING
                and (user_id is None or row[USER_ID] == user_id)
            ):
                await self._table.add_waiter(task_id)  # its end, here: no timer, no record
            row = self._finished_row(task_id, user_id)
            if row is not None:
                if row[STATUS] == V_COMPLETED:
                    return row[RESULT]
                status, _, error = outcome(row)
                raise TaskFailed(task_id, status, error)
        rec = await self._terminal(task_id, timeout, user_id)
        if rec.status is TaskStatus.COMPLETED:
            return rec.result
        raise TaskFailed(rec.task_id, rec.status, rec.error)

    def _finished_row(self, task_id: str, user_id: str | None) -> Live | None:
        """The final row of a task, if this instance or its in-process store has it."""
        row = self._table.rows.get(task_id)
        if row is None:
            row = self._table.recent(task_id)
        if row is None and self._in_process is not None:
            row = self._in_process.kept(task_id)
        if row is None or row[STATUS] == V_RUNNING:
            return None
        if user_id is not None and row[USER_ID] != user_id:
            return None
        return row

    async def _terminal(
        self, task_id: str, timeout: float | None, user_id: str | None
    ) -> TaskRecord:
        """The task's terminal record, after waiting for it (the first read included)."""
        rec = self.peek(task_id, user_id)
        if rec is None:
            check_id(task_id, "task_id")
            await self._ready()
        elif rec.status is not TaskStatus.RUNNING:
            return rec
        try:
            async with asyncio.timeout(timeout):
                if rec is None:
                    rec = await self.lookup(task_id, user_id)
                    if rec is None:
                        raise TaskNotFound(task_id)
                    if rec.status is not TaskStatus.RUNNING:
                        return rec
                return await self._wait_terminal(task_id)
        except TimeoutError:
            raise TaskTimeout(task_id, timeout or 0.0) from None

    async def _wait_terminal(self, task_id: str) -> TaskRecord:
        table = self._table
        while True:
            if table.runs_here(task_id, None):
                await table.add_waiter(task_id)
                # Finished, or found finished: here, or (already written) kept
                # here or in an in-process store, without a round trip.
                rec = self.peek(task_id, None)
                if rec is not None and rec.status is not TaskStatus.RUNNING:
                    return rec
                continue
            rec = self.peek(task_id, None)
            if rec is not None and rec.status is not TaskStatus.RUNNING:
                return rec
            fut = self._hub.wait_remote(task_id)
            try:
                try:
                    rec = await self._store.get(task_id)
                except StoreUnavailable:
                    rec = None  # known running: wait on, for its event or the next read
                else:
                    if rec is None:
                        raise TaskNotFound(task_id)
                    if rec.status is not TaskStatus.RUNNING:
                        return rec
                await asyncio.wait((fut,), timeout=WAIT_POLL)
            finally:
                self._hub.unwait(task_id, fut)
