"""TaskManager: the public face of taskward — its methods and their argument checks.

The state and the rules live in objects that own them, each given what it needs:
the local table of this instance's tasks (`_table.py`), the event hub
(`_hub.py`), the write-behind flusher (`_sync.py`), reads and waits
(`_reads.py`), stops (`_stopping.py`) and liveness (`_housekeeping.py`). See
"How it works" in the README for the rules and why.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

from ._assembly import assemble
from ._backends import open_backend
from ._checks import (
    check_int,
    check_positive,
    check_timings,
    close_if_coroutine,
    is_coroutine,
)
from ._encoding import DEFAULT_MAX_VALUE_SIZE, ValueEncoder
from ._ids import check_id, check_optional_id, default_instance_id, new_task_id
from ._records import TaskStatus
from ._scope import Caller, scope_of
from ._sync import SYNC_TIMEOUT, cancel_and_wait
from ._truncate import MIN_LIMIT
from .errors import ManagerClosed, StoreUnavailable, TaskIdInUse, TaskNotFound
from .stores.base import InProcessStore, Page, retention_of

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterable
    from types import TracebackType

    from ._delivery import PlatformAdapter
    from ._encoding import EncoderHook
    from ._events import EventStream
    from ._pulse import Pulse
    from ._records import OutputChunk, StopResult, TaskRecord
    from .bus.base import Bus
    from .stores.base import InstanceInfo, Store

__all__ = ["TaskManager"]

logger = logging.getLogger(__name__)

CLOSE_REASON = "manager closed"


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class TaskManager:
    """Runs coroutines as tracked tasks; reads, waits for, lists and stops them.

    Usable directly (it starts on first use) or as ``async with TaskManager() as
    tm``; `aclose()` ends it: running tasks get `shutdown_grace` seconds to
    finish, then are cancelled, and all final states are written.

    `store` is None for the in-process default, a `Store`, or a URL for
    `taskward.stores.open_store` (`memory://`, `redis://`, `rediss://`,
    `unix://`, `redis+sentinel://`, `redis+cluster://`): a store and bus shared
    by every instance on the same server and `prefix`. `redis` takes such a
    Redis URL too, or a `redis.asyncio` client.

    Every read, wait, listing and stop takes `caller=` (a `Caller`): a caller that
    is not an admin sees only its own tasks, and another user's task answers
    exactly like a missing one. `user_id=` keeps the meaning the prior systems
    gave it: set, only that user's tasks; None, every task.

    What a task hands over (result, error message, metadata, progress message,
    output) is encoded once, here, by one rule (see the README): `encoder` is a
    hook for an application's own types, `max_value_size` the limit in bytes.

    `socket_timeout` and `connect_timeout` bound every Redis command and
    connection (None: 5 s and 2 s); a silent server then answers reads with
    `StoreUnavailable` and stops with `pending` instead of hanging.
    """

    def __init__(
        self,
        timeout: float = 10.0,
        redis: Any = None,
        *,
        store: Store | str | None = None,
        bus: Bus | None = None,
        prefix: str = "taskward",
        instance_id: str | None = None,
        result_ttl: float | None = None,
        max_finished: int | None = None,
        max_output: int | None = None,
        stop_timeout: float = 5.0,
        shutdown_grace: float = 5.0,
        shutdown_timeout: float = 5.0,
        heartbeat_interval: float = 1.0,
        liveness_ttl: float = 3.0,
        secret: str | bytes | None = None,
        max_backlog: int = 100_000,
        encoder: EncoderHook | None = None,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        socket_timeout: float | None = None,
        connect_timeout: float | None = None,
        redirect_adapters: Mapping[str, PlatformAdapter] | None = None,
        delivery_timeout: float = 300.0,
        delivery_attempt_timeout: float = 10.0,
    ) -> None:
        check_timings(
            timeout,
            stop_timeout,
            shutdown_grace,
            shutdown_timeout,
            heartbeat_interval,
            liveness_ttl,
        )
        check_int("max_backlog", max_backlog, 1)
        check_positive("delivery_timeout", delivery_timeout)
        check_positive("delivery_attempt_timeout", delivery_attempt_timeout)
        if redirect_adapters is not None and not isinstance(redirect_adapters, Mapping):
            raise TypeError("redirect_adapters must be a mapping of platform names to adapters")
        own_store = store is None or isinstance(store, str)
        retention = retention_of(result_ttl, max_finished, max_output, own_store=own_store)
        self.timeout = float(timeout)
        self.stop_timeout = float(stop_timeout)
        self.shutdown_grace = float(shutdown_grace)
        self.shutdown_timeout = float(shutdown_timeout)
        self.heartbeat_interval = float(heartbeat_interval)
        self.liveness_ttl = float(liveness_ttl)
        self.max_backlog = max_backlog
        self.instance_id = check_id(instance_id or default_instance_id(), "instance_id")
        #: The encoding rule every value a task hands over goes through.
        self.encoder = ValueEncoder(encoder, max_value_size)
        # Nobody but this manager can ever hear of its tasks (its own store and bus
        # in memory): the hot path skips events and store syncs.
        alone = (store is None or store == "memory://") and bus is None and redis is None
        backend = open_backend(
            redis,
            store,
            bus,
            prefix=prefix,
            retention=retention,
            secret=secret,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
        )
        self._store, self._bus = backend.store, backend.bus
        self._make_pulse = backend.pulse
        # What aclose() must close: what was opened here.
        self._owned = [] if backend.connection is None else [backend.connection]
        self.retention = self._store.retention
        self._pulse: Pulse | None = None
        self._alone = alone
        self._state = _State.NEW
        self._started: asyncio.Future[None] | None = None
        self._closed_event: asyncio.Event | None = None
        self._housekeeping: asyncio.Task[None] | None = None

        parts = assemble(
            self._store,
            self._bus,
            instance_id=self.instance_id,
            encoder=self.encoder,
            encode_events=backend.encode_events,
            alone=alone,
            ready=self._ensure_started,
            stop_timeout=self.stop_timeout,
            heartbeat_interval=self.heartbeat_interval,
            liveness_ttl=self.liveness_ttl,
            redirect_adapters=redirect_adapters,
            delivery_timeout=float(delivery_timeout),
            delivery_attempt_timeout=float(delivery_attempt_timeout),
        )
        self._deliverer, self._redirector = parts.deliverer, parts.redirector
        self._flusher, self._hub, self._table = parts.flusher, parts.hub, parts.table
        self._keeper, self._reader, self._stopper = parts.keeper, parts.reader, parts.stopper
        self._bus_handlers = parts.handlers
        # A creation waits for its write where others may read it: a shared store.
        self._shared_store = not alone and not isinstance(self._store, InProcessStore)

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect and register this instance. Called for you on first use."""
        if self._state is _State.RUNNING:
            return
        if self._state in (_State.CLOSING, _State.CLOSED):
            raise ManagerClosed("this TaskManager is closed; create a new one")
        if self._started is not None:
            await asyncio.shield(self._started)
            return
        self._state = _State.STARTING
        self._started = asyncio.get_running_loop().create_future()
        try:
            await self._store.start()
            await self._store.heartbeat(self.instance_id, self.liveness_ttl)
            await self._bus.start(self.instance_id, self._bus_handlers)
            self._table.bind_loop(asyncio.get_running_loop())
            if self._make_pulse is not None:
                self._pulse = self._make_pulse(
                    self.instance_id, self.liveness_ttl, self.heartbeat_interval
                )
                if self._pulse is not None:
                    self._pulse.start()
        except BaseException as exc:
            self._state = _State.NEW
            started, self._started = self._started, None
            started.set_exception(exc)
            started.exception()  # retrieved: concurrent starters see it via shield
            raise
        self._keeper.started()
        self._flusher.start()
        self._housekeeping = asyncio.create_task(self._keeper.run(), name="taskward-housekeeping")
        if not self._alone:  # others may enqueue deliveries: deliver them too
            self._deliverer.start()
        self._state = _State.RUNNING
        self._started.set_result(None)

    async def aclose(self) -> None:
        """Finish, cancel, record, disconnect. Idempotent; concurrent calls wait for the first."""
        if self._state in (_State.CLOSING, _State.CLOSED):
            if self._closed_event is not None:
                await self._closed_event.wait()
            return
        was_started = self._state is _State.RUNNING
        self._state = _State.CLOSING
        closed = self._closed_event = asyncio.Event()
        try:
            if was_started:
                await self._table.drain(self.shutdown_grace, self.shutdown_timeout, CLOSE_REASON)
                await self._flusher.aclose(self.shutdown_timeout)
                await self._deliverer.aclose(self.shutdown_timeout)
                await self._stopper.aclose(self.shutdown_timeout)
                if self._housekeeping is not None:
                    await cancel_and_wait(self._housekeeping)
                await self._bus.aclose()
                if self._pulse is not None:
                    await asyncio.to_thread(self._pulse.stop)  # before retiring: no more beats
                try:
                    await self._store.retire(self.instance_id)
                except StoreUnavailable:
                    logger.warning(
                        "could not retire instance %s: store unreachable", self.instance_id
                    )
            self._hub.close_streams()
            await self._store.aclose()
            for resource in self._owned:
                await resource.aclose()
        finally:
            self._state = _State.CLOSED
            closed.set()

    async def _ensure_started(self) -> None:
        if self._state is not _State.RUNNING:
            await self.start()

    # -- creating tasks --------------------------------------------------------

    async def create_task(
        self,
        coro: Coroutine[Any, Any, Any],
        item_id: str | None = None,
        *,
        user_id: str | None = None,
        caller: Caller | None = None,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        max_runtime: float | None = None,
        channel_id: str = "",
        platform: str = "",
        task_id: str | None = None,
    ) -> str:
        """Start `coro` as a tracked task and return its id (a random uuid4).

        `item_id` groups tasks (a chat, a document); `user_id` (or `caller`'s
        user) owns it. `max_runtime` (seconds) cancels the task when it runs
        longer, recording a `MaxRuntimeExceeded` error. `task_id` chooses the id
        (checked like every caller id; `TaskIdInUse` if a task with it is known),
        for callers whose ids come from elsewhere. `metadata` is encoded by the
        encoding rule (`ValueNotEncodable` if it cannot be). On bad arguments the
        coroutine is closed, so nothing is left half-started.
        """
        try:
            if not is_coroutine(coro):
                raise TypeError(f"create_task needs a coroutine, not {type(coro).__name__}")
            if item_id is not None:
                check_id(item_id, "item_id")
            if caller is not None:
                scope_of(user_id, caller)  # a Caller, and not both
                user_id = caller.user_id
            elif user_id is not None:
                check_id(user_id, "user_id")
            if name is not None and not isinstance(name, str):
                raise TypeError(f"name must be a str, not {type(name).__name__}")
            if not isinstance(channel_id, str):
                raise TypeError(f"channel_id must be a str, not {type(channel_id).__name__}")
            if not isinstance(platform, str):
                raise TypeError(f"platform must be a str, not {type(platform).__name__}")
            if metadata is not None:
                if not isinstance(metadata, dict):
                    raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
                metadata = self.encoder.value(metadata, "metadata")
            if max_runtime is not None:
                check_positive("max_runtime", max_runtime)
            if self._state is not _State.RUNNING:
                await self.start()
            if task_id is not None:
                await self._check_new_id(task_id)
            else:
                task_id = new_task_id()
            if not self._keeper.connected and len(self._table.rows) >= self.max_backlog:
                raise StoreUnavailable(
                    f"store unreachable and {len(self._table.rows)} tasks are waiting to be written"
                )
        except BaseException:
            close_if_coroutine(coro)
            raise
        self._table.start(
            task_id,
            coro,
            name=name or "",
            item_id=item_id,
            user_id=user_id,
            channel_id=channel_id,
            platform=platform,
            metadata=metadata or None,
            max_runtime=max_runtime,
        )
        if (
            not self._alone
            and self._keeper.connected
            and (self._shared_store or self._bus.has_peers())
        ):
            # Return once the task is visible to every instance. Concurrent creations
            # share the write; a store known to be down is not waited for (the task
            # runs and is written on reconnect), a slow one only for so long.
            await self._flusher.sync(SYNC_TIMEOUT)
        return task_id

    async def _check_new_id(self, task_id: str) -> None:
        check_id(task_id, "task_id")
        if await self._reader.lookup(task_id, None) is not None:
            raise TaskIdInUse(task_id)

    # -- redirects -------------------------------------------------------------------

    async def set_output_redirect(
        self,
        task_id: str,
        channel_id: str,
        platform: str,
        max_chars: int = 0,
        *,
        caller: Caller | None = None,
        user_id: str | None = None,
    ) -> bool:
        """Deliver the task's result (or error) to `channel_id` on `platform` when it ends.

        At once if it has ended already. The redirect becomes part of the task's
        record, on every instance (``record.redirect``: the target and the
        delivery's state, ``pending``, ``delivered`` or ``failed``). Delivery is
        durable: recorded in the store before it is tried, retried, taken over
        by another instance if this one dies, given up `delivery_timeout`
        seconds after it was enqueued. `max_chars` cuts the delivered text (0:
        only the platform's own limit). Setting it again on a running task
        replaces the target; on an ended one, the same target delivers once, a
        new target once more. False if the task is unknown or not the caller's.
        """
        check_id(task_id, "task_id")
        check_id(channel_id, "channel_id")
        if not isinstance(platform, str):
            raise TypeError(f"platform must be a str, not {type(platform).__name__}")
        if not platform:
            raise ValueError("platform must not be empty")
        if isinstance(max_chars, bool) or not isinstance(max_chars, int):
            raise TypeError(f"max_chars must be an int, not {type(max_chars).__name__}")
        if max_chars != 0 and max_chars < MIN_LIMIT:
            raise ValueError(f"max_chars must be 0 or at least {MIN_LIMIT}, not {max_chars}")
        if not self._deliverer.knows(platform):
            raise ValueError(f"no redirect adapter for platform {platform!r}")
        scope = scope_of(user_id, caller)
        await self._ensure_started()
        return await self._redirector.redirect(task_id, channel_id, platform, max_chars, scope)

    async def pending_deliveries(self) -> int:
        """How many redirect deliveries the store holds queued (on every instance)."""
        await self._ensure_started()
        return await self._store.pending_deliveries()

    # -- reading ---------------------------------------------------------------------

    async def get_record(
        self, task_id: str, user_id: str | None = None, *, caller: Caller | None = None
    ) -> TaskRecord | None:
        """A copy of the task's record, or None if unknown, expired or not the caller's."""
        check_id(task_id, "task_id")
        scope = scope_of(user_id, caller)
        await self._ensure_started()
        return await self._reader.lookup(task_id, scope)

    async def wait(
        self,
        task_id: str,
        timeout: float | None = None,
        *,
        user_id: str | None = None,
        caller: Caller | None = None,
    ) -> TaskRecord:
        """Wait until the task is terminal and return (a copy of) its record.

        Raises `TaskNotFound` (unknown or not the caller's) or `TaskTimeout`.
        Waiting is woken by the task's own end (here) or by its event (from
        another instance), then reads the record; a slow re-read of the store is
        the safety net.
        """
        if timeout is not None:
            check_positive("timeout", timeout, allow_zero=True)
        return await self._reader.wait(task_id, timeout, scope_of(user_id, caller))

    async def result(
        self,
        task_id: str,
        timeout: float | None = None,
        *,
        user_id: str | None = None,
        caller: Caller | None = None,
    ) -> Any:
        """Wait until the task is terminal and return its result, as encoded.

        Like `await task` for an `asyncio.Task`: raises `TaskFailed` (with the
        final status and the recorded error) if the task failed, was cancelled
        or was lost, and `TaskNotFound` or `TaskTimeout` like `wait`.
        """
        if timeout is not None:
            check_positive("timeout", timeout, allow_zero=True)
        scope = None if user_id is None and caller is None else scope_of(user_id, caller)
        return await self._reader.result(task_id, timeout, scope)

    async def records(
        self,
        *,
        user_id: str | None = None,
        caller: Caller | None = None,
        item_id: str | None = None,
        status: TaskStatus | str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """A page of records matching the filters, newest first, with a cursor for the next.

        With a `caller` that is not an admin, only its own tasks; `user_id` then
        filters by owner for an admin (and is the owner filter without a caller).
        """
        check_optional_id(user_id, "user_id")
        check_optional_id(item_id, "item_id")
        wanted = None if status is None else TaskStatus(status)
        check_int("limit", limit, 1)
        scope = None if caller is None else scope_of(None, caller)
        if scope is not None and user_id is not None and user_id != scope:
            return Page([], None)
        await self._ensure_started()
        await self._flusher.sync()
        return await self._store.query(
            user_id=scope or user_id, item_id=item_id, status=wanted, limit=limit, cursor=cursor
        )

    async def read_output(
        self,
        task_id: str,
        *,
        after: int = 0,
        limit: int = 1000,
        user_id: str | None = None,
        caller: Caller | None = None,
    ) -> list[OutputChunk]:
        """Output chunks of a task with `seq > after`, oldest first.

        Pass the `seq` of the last chunk you read as `after` to resume.
        """
        check_id(task_id, "task_id")
        scope = scope_of(user_id, caller)
        check_int("after", after, 0)
        check_int("limit", limit, 1)
        await self._ensure_started()
        if await self._reader.lookup(task_id, scope) is None:
            raise TaskNotFound(task_id)
        await self._flusher.sync()
        return await self._store.read_output(task_id, after, limit)

    async def list_task_ids_by_item_id(
        self, item_id: str, *, caller: Caller | None = None
    ) -> list[str]:
        """Ids of the item's running tasks (on any instance, the caller's only), oldest first."""
        check_id(item_id, "item_id")
        scope = scope_of(None, caller)
        await self._ensure_started()
        await self._flusher.sync()
        if scope is None:
            return await self._store.running_ids_by_item(item_id)
        page = await self._store.query(
            item_id=item_id, user_id=scope, status=TaskStatus.RUNNING, limit=10_000
        )
        return [rec.task_id for rec in reversed(page.records)]

    # -- the strings a language model reads (taskward.tools) -------------------------

    async def get_result(self, task_id: str, user_id: str | None = None) -> str:
        """The task's status as compact JSON: result or error once terminal.

        An unknown id and another user's task give the same `not_found` answer.
        An empty `user_id` means no user, as in the tool APIs this replaces.
        """
        from .tools import calls  # a surface: imported when used, never by the core

        await self._ensure_started()
        return await calls.get_result(self, task_id, user_id)

    async def await_result(
        self, task_id: str, timeout: float = 300.0, user_id: str | None = None
    ) -> str:
        """Like `get_result`, after waiting up to `timeout` seconds for the task to finish."""
        from .tools import calls

        return await calls.await_result(self, task_id, timeout, user_id)

    async def list_tasks(
        self,
        user_id: str | None = None,
        item_id: str | None = None,
        status: TaskStatus | str | None = None,
    ) -> str:
        """Compact JSON listing of tasks (newest first, up to 100) with their status."""
        from .tools import calls

        return await calls.list_tasks(self, user_id, item_id, status)

    async def execute(
        self,
        coro: Coroutine[Any, Any, Any],
        tool_name: str = "",
        user_id: str = "",
        channel_id: str = "",
        platform: str = "",
        *,
        timeout: float | None = None,
        background: bool = True,
    ) -> str:
        """Run a tool call: its result inline if it beats the timeout, else an envelope.

        A result that is not a `str` is returned as JSON. When the tool is still
        running after `timeout` (default: the manager's), it keeps running
        (never cancelled by the timeout) and a JSON envelope with its `task_id`
        is returned for the model to poll with `check_task`. A tool that raises
        gives an error envelope, never an exception into the tool loop. With
        `background=False` the tool is simply awaited.
        """
        from .tools import calls

        return await calls.execute(
            self,
            coro,
            tool_name,
            user_id,
            channel_id,
            platform,
            timeout=timeout,
            background=background,
        )

    # -- stopping -----------------------------------------------------------------------

    async def stop_task(
        self, task_id: str, user_id: str | None = None, *, caller: Caller | None = None
    ) -> StopResult:
        """Stop a task wherever it runs and say what happened.

        Writes a durable stop request, wakes the owner, and waits up to
        `stop_timeout` for the record to say it ended: `cancelled`;
        `already_finished` (with the final status, also when the task swallowed
        the cancellation and finished otherwise); `not_found` (unknown or not the
        caller's); or `pending` (not confirmed in time, or the store stopped
        answering: the request stays and will be honoured).
        """
        check_id(task_id, "task_id")
        scope = scope_of(user_id, caller)
        await self._ensure_started()
        return await self._stopper.stop_task(task_id, scope)

    async def stop_item_tasks(
        self, item_id: str, user_id: str | None = None, *, caller: Caller | None = None
    ) -> list[StopResult]:
        """Stop every running task of an item, including tasks added while stopping.

        Returns what happened to each task (tasks the caller may not see are left
        alone and not mentioned).
        """
        check_id(item_id, "item_id")
        scope = scope_of(user_id, caller)
        await self._ensure_started()
        return await self._stopper.stop_item_tasks(item_id, scope)

    # -- events ------------------------------------------------------------------

    def events(
        self,
        *,
        task_id: str | None = None,
        user_id: str | None = None,
        item_id: str | None = None,
        kinds: Iterable[str] | None = None,
        maxsize: int = 1000,
        caller: Caller | None = None,
    ) -> EventStream:
        """Subscribe to task events (of this and, through the bus, every instance).

        Filters combine with AND; `kinds` picks among `created`, `progress`,
        `output`, `finished`, `stop_requested`. Use as an async context manager.
        """
        for what, value in (("task_id", task_id), ("item_id", item_id)):
            check_optional_id(value, what)
        scope = scope_of(user_id, caller)
        if self._state is _State.CLOSED:
            raise ManagerClosed("this TaskManager is closed")
        return self._hub.open_stream(
            task_id=task_id, user_id=scope, item_id=item_id, kinds=kinds, maxsize=maxsize
        )

    # -- introspection -------------------------------------------------------------------

    async def instances(self) -> list[InstanceInfo]:
        """Every instance the store knows: alive or not, running tasks, last heartbeat."""
        await self._ensure_started()
        return await self._store.instances()

    async def counts(self) -> dict[TaskStatus, int]:
        """Tasks by status, every status present (from the store's indexes, not a scan)."""
        await self._ensure_started()
        await self._flusher.sync()
        return await self._store.counts()

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def running_count(self) -> int:
        """Tasks of this instance that have not finished yet."""
        return self._table.running_count
