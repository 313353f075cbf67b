"""The Store protocol: where task records, indexes and output streams live.

One `TaskManager` talks to one store; several managers (instances) may share
one (a `RedisStore` on the same server and prefix, or one `MemoryStore` object in
a process). The manager is the only writer of a task's own fields and calls
`save()` from a single flusher, once per loop turn with every record that changed
in that turn; stores keep these writes cheap by batching them (one pipeline).

A backend written outside taskward imports everything it needs from this
module: the protocol, the types it speaks (`Row`, `WriteBatch`, `Page`,
`Retention`, `InstanceInfo`) and the converters between rows and records.

Rows
----
Records reach `save()` (and `heartbeat()`) as *rows*: the owner's own records,
plain tuples it replaces (never changes) as its tasks change, kept as tuples so
Python's cyclic garbage collector does not walk them. A store may keep a row as
it is but must never hand one out: every read returns a fresh `TaskRecord`
(`row_to_record(row)`); `record_to_row(record)` goes the other way. Positions:

=====================  =====================================================
Position               Holds
=====================  =====================================================
``TASK_ID``            the task id (str)
``STATUS``             the status as its string value (``TaskStatus.X.value``)
``NAME``               the task's name (str, may be empty)
``ITEM_ID``            item id, or None
``USER_ID``            user id, or None
``CHANNEL_ID``         channel id (str, may be empty)
``PLATFORM``           platform (str, may be empty)
``INSTANCE_ID``        the owner instance's id
``CREATED_AT``         creation time (Unix seconds, float)
``STARTED_AT``         start time, or None
``UPDATED_AT``         time of the last change
``FINISHED_AT``        finish time, None while running
``RESULT``             the result (already encoded by the owner), or None
``ERROR``              the error (a `TaskError`), or None
``PROGRESS``           progress fraction, or None
``PROGRESS_MESSAGE``   progress message, or None
``METADATA``           metadata dict, None when empty
``REDIRECT``           redirect target and delivery state (a flat dict, see
                       "Redirects" below), or None (a store keeps its own:
                       only `set_redirect` and the delivery queue set it)
``STOP_REQUESTED_AT``  when a stop was requested, or None (a store keeps its
                       own: only `request_stop` sets it)
``MAX_RUNTIME``        seconds the task may run, or None
=====================  =====================================================

Redirects
---------
A task's redirect says where its result goes when it finishes. The store owns
it (like the stop request: `save()` neither writes nor clears it) and keeps the
rule that makes it durable: whichever comes second, the redirect being set or
the task ending (saved terminal, or reaped `lost`), enqueues one `Delivery`
in the same atomic step. The record's ``redirect`` dict is flat:

=================  ==========================================================
Key                Holds
=================  ==========================================================
``channel_id``     where to deliver (str)
``platform``       the adapter's name (str)
``max_chars``      the cut for the delivered text, 0 for the platform's limit
``set_at``         when the redirect was set (Unix seconds)
``delivery_id``    the enqueued delivery's id, None while the task runs
``state``          None while the task runs; ``pending``, ``delivered`` or
                   ``failed``
``attempts``       requests started for the delivery (a claim counts one)
``last_error``     the last failure, or None
``enqueued_at``    when the delivery was enqueued, or None
``done_at``        when it was delivered or given up, or None
=================  ==========================================================

Deliveries are claimed with a lease (`claim_deliveries`): a claimed delivery
is due again when its lease ends, so one whose claimer died is claimed by
another. `retry_delivery` and `end_delivery` take the claim's token and do
nothing for a stale one (a claimer whose lease ran out).

Capabilities
------------
Some stores can do more than the protocol asks; each such capability is a
`runtime_checkable` protocol here, so the manager asks
``isinstance(store, InProcessStore)`` instead of probing for methods:

- `InProcessStore`: the store lives in this process and answers without I/O
  (`MemoryStore`): reads and writes without a coroutine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

from .._checks import check_int, check_positive
from .._live import (
    CHANNEL_ID,
    CREATED_AT,
    ERROR,
    FINISHED_AT,
    INSTANCE_ID,
    ITEM_ID,
    MAX_RUNTIME,
    METADATA,
    NAME,
    PLATFORM,
    PROGRESS,
    PROGRESS_MESSAGE,
    REDIRECT,
    RESULT,
    STARTED_AT,
    STATUS,
    STOP_REQUESTED_AT,
    TASK_ID,
    UPDATED_AT,
    USER_ID,
    Live,
    from_record,
    snapshot,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._records import OutputChunk, TaskError, TaskRecord, TaskStatus

__all__ = [
    "CHANNEL_ID",
    "CREATED_AT",
    "DELIVERY_STATES",
    "ERROR",
    "FINISHED_AT",
    "INSTANCE_ID",
    "ITEM_ID",
    "MAX_RUNTIME",
    "METADATA",
    "NAME",
    "PLATFORM",
    "PROGRESS",
    "PROGRESS_MESSAGE",
    "REDIRECT",
    "RESULT",
    "STARTED_AT",
    "STATUS",
    "STOP_REQUESTED_AT",
    "TASK_ID",
    "UPDATED_AT",
    "USER_ID",
    "Delivery",
    "InProcessStore",
    "InstanceInfo",
    "Page",
    "Retention",
    "Row",
    "Store",
    "WriteBatch",
    "record_to_row",
    "redirect_target",
    "retention_of",
    "row_to_record",
]

#: A record as `save()` receives it: a tuple laid out as the table above says.
Row: TypeAlias = Live

#: The row of a `TaskRecord` (a store that keeps rows turns records into them).
record_to_row = from_record

#: A fresh `TaskRecord` of a row: what every read hands out.
row_to_record = snapshot


@dataclass(slots=True, frozen=True)
class Retention:
    """How long and how many finished tasks are kept, and how long output streams get.

    `result_ttl`: seconds a terminal record (with its result, output and index
    entries) is kept after it finished. `max_finished`: at most this many
    terminal records are kept; the oldest go first. `max_output`: chunks kept
    per task output stream (older ones are dropped).
    """

    result_ttl: float = 3600.0
    max_finished: int = 10_000
    max_output: int = 1_000

    def __post_init__(self) -> None:
        check_positive("result_ttl", self.result_ttl)
        if math.isinf(self.result_ttl):
            raise ValueError("result_ttl must be a finite number of seconds, not inf")
        check_int("max_finished", self.max_finished, 1)
        check_int("max_output", self.max_output, 1)


def retention_of(
    result_ttl: float | None,
    max_finished: int | None,
    max_output: int | None,
    *,
    own_store: bool,
) -> Retention:
    """The retention of the store a `TaskManager` creates (limits only apply to that one)."""
    limits = {
        name: value
        for name, value in (
            ("result_ttl", result_ttl),
            ("max_finished", max_finished),
            ("max_output", max_output),
        )
        if value is not None
    }
    if limits and not own_store:
        raise ValueError(
            f"{', '.join(limits)} configure the store this manager creates; "
            "with store=..., give them to the store (its `retention`)"
        )
    defaults = Retention()
    return Retention(
        result_ttl=defaults.result_ttl if result_ttl is None else result_ttl,
        max_finished=defaults.max_finished if max_finished is None else max_finished,
        max_output=defaults.max_output if max_output is None else max_output,
    )


@dataclass(slots=True)
class WriteBatch:
    """What one flush writes.

    `records`: records whose state changed (created, progress, finished...),
    each at most once. A record may arrive already terminal without ever having
    been saved as running (a task that finished in the turn it was created).
    `outputs`: new output chunks per task id, in order.
    `now`: the flush time, for retention.
    `notice`: an encoded events message that a store sharing its server with the
    bus publishes on the events channel right after the write, in the same round
    trip (set only for such a pair; see `TaskManager`).
    """

    records: list[Row] = field(default_factory=list)
    outputs: dict[str, list[OutputChunk]] = field(default_factory=dict)
    now: float = 0.0
    notice: str | None = None

    def __bool__(self) -> bool:
        return bool(self.records or self.outputs)


@dataclass(slots=True, frozen=True)
class Page:
    """One page of a listing, newest first; pass `cursor` back for the next page."""

    records: list[TaskRecord]
    cursor: str | None


#: A delivery's states, as the record's ``redirect["state"]`` says them.
DELIVERY_STATES = ("pending", "delivered", "failed")


def redirect_target(channel_id: str, platform: str, max_chars: int, at: float) -> dict[str, Any]:
    """A redirect as `set_redirect` takes it: the target, no delivery yet."""
    return {
        "channel_id": channel_id,
        "platform": platform,
        "max_chars": max_chars,
        "set_at": at,
        "delivery_id": None,
        "state": None,
        "attempts": 0,
        "last_error": None,
        "enqueued_at": None,
        "done_at": None,
    }


@dataclass(slots=True, frozen=True)
class Delivery:
    """One claimed delivery of a finished task's outcome to a channel.

    What to send is copied from the record when the delivery is enqueued, so it
    does not depend on the record's retention. `delivery_id` is unique in the
    store and stable across retries: adapters send it as the idempotency key.
    `attempts` counts this claim. `token` is the claim's: `retry_delivery` and
    `end_delivery` refuse another.
    """

    delivery_id: str
    task_id: str
    channel_id: str
    platform: str
    max_chars: int
    enqueued_at: float
    attempts: int
    token: str
    status: TaskStatus
    name: str = ""
    result: Any = None
    error: TaskError | None = None
    user_id: str | None = None
    item_id: str | None = None
    finished_at: float | None = None


@dataclass(slots=True, frozen=True)
class InstanceInfo:
    """One instance as the store knows it (see `Store.instances`).

    `alive`: its liveness has not lapsed. `running`: how many of its tasks the
    store holds as running. `last_heartbeat`: Unix time of the last heartbeat
    it sent from its event loop, or None if it never sent one (it is known
    only as the owner of running tasks).
    """

    instance_id: str
    alive: bool
    running: int
    last_heartbeat: float | None


class Store(Protocol):
    """Storage behind a `TaskManager`. All methods may raise `StoreUnavailable`."""

    retention: Retention

    async def start(self) -> None:
        """Connect (if needed) and check the store answers."""

    async def aclose(self) -> None:
        """Release connections. Idempotent."""

    async def save(self, batch: WriteBatch) -> None:
        """Upsert every record of `batch` with its indexes and append its outputs.

        For each record: write its fields (never `stop_requested_at`, which only
        `request_stop` writes); index it by creation time under all tasks, its
        user, its item and its status; keep running tasks in the set of their
        instance. A terminal record leaves the running indexes and its instance's
        sets, is kept for `retention.result_ttl` and counts towards
        `retention.max_finished` (the oldest finished records beyond it are
        deleted with their index entries and output). A record that is already
        terminal in the store is never overwritten (terminal states never change).
        """

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record, or None if unknown or expired."""

    async def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        """Records in the order asked, None where unknown or expired."""

    async def query(
        self,
        *,
        user_id: str | None = None,
        item_id: str | None = None,
        status: TaskStatus | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """Records matching every given filter, newest first, read from an index.

        `cursor` is an opaque string from a previous page of the same query.
        Raises ValueError for a malformed cursor.
        """

    async def counts(self) -> dict[TaskStatus, int]:
        """How many records the store holds in each status, every status present.

        Read from indexes or counters, never by going over records. Records past
        their retention are not counted.
        """

    async def running_ids_by_item(self, item_id: str) -> list[str]:
        """Ids of the item's tasks that are still running, oldest first."""

    async def read_output(
        self, task_id: str, after: int = 0, limit: int = 1000
    ) -> list[OutputChunk]:
        """Output chunks with `seq > after`, oldest first, at most `limit`."""

    async def request_stop(
        self, task_id: str, at: float, user_id: str | None = None
    ) -> TaskRecord | None:
        """Durably ask the owner to stop a task; return the record as it now stands.

        If the task is running and has no stop request yet, set its
        `stop_requested_at` to `at` and add it to its instance's stop set, in one
        atomic step. Returns None, writing nothing, for an unknown task and, when
        `user_id` is given, for another user's task.
        """

    async def pending_stops(self, instance_id: str) -> list[str]:
        """Ids of the instance's running tasks that have a stop request."""

    async def heartbeat(
        self, instance_id: str, ttl: float, running: Sequence[Row] | None = None
    ) -> bool:
        """Mark the instance alive for `ttl` seconds; return whether it still was.

        False means its liveness had lapsed: the instance is new, the store
        lost its data, or a reaper may have taken it for dead (its running
        tasks may be `lost`), so the manager checks and re-asserts them.

        With `running`, also re-assert those records as running on this instance
        (after a reconnect, when the store may have lost or reaped them): records
        the store does not know are written again; records the store already has
        as terminal are left alone.
        """

    async def reap(self, now: float) -> list[TaskRecord]:
        """Mark `lost` the running tasks of every instance whose liveness expired.

        Only one reaper acts at a time (a lock where the store is shared between
        processes). Each lost record gets `finished_at = now` and a `TaskLost`
        error. Returns the records it marked lost, so their events can be sent.
        The manager calls this only after it has itself been connected for longer
        than the liveness TTL, so instances coming back from an outage have had
        time to re-register first.
        """

    async def retire(self, instance_id: str) -> None:
        """Forget a cleanly closed instance (its liveness and its empty sets).

        An instance that still has running tasks in the store is not forgotten:
        its liveness ends, so the reaper marks those tasks lost.
        """

    async def instances(self) -> list[InstanceInfo]:
        """The instances the store knows, by instance id.

        An instance is known from its first heartbeat (or from the first
        running task it saves) until it is retired or reaped. One whose
        liveness lapsed is listed with ``alive=False`` until then.
        """

    async def set_redirect(
        self, task_id: str, target: dict[str, Any], at: float, user_id: str | None = None
    ) -> TaskRecord | None:
        """Set a task's redirect (`redirect_target(...)`); return the record as it now stands.

        On a running task the target replaces any earlier one. On a terminal
        task, one atomic step sets it and enqueues its delivery, due at `at`,
        unless the task already has a delivery to the same channel, platform
        and `max_chars` (setting the same redirect twice delivers once).
        Returns None, writing nothing, for an unknown task and, when `user_id`
        is given, for another user's task.
        """

    async def claim_deliveries(self, now: float, lease: float, limit: int) -> list[Delivery]:
        """Claim up to `limit` deliveries due by `now`, oldest due first, for `lease` seconds.

        Each claimed delivery gets a new token and one more attempt (on the
        record too), and is due again at ``now + lease`` unless it is retried or
        ended first.
        """

    async def retry_delivery(self, delivery: Delivery, due: float, error: str) -> bool:
        """Release a claim after a failed attempt: due again at `due`, `error` recorded.

        False, changing nothing, when the claim is stale (another claim has taken it,
        or the delivery ended).
        """

    async def end_delivery(
        self, delivery: Delivery, delivered: bool, error: str | None, at: float
    ) -> bool:
        """Take a claimed delivery off the queue: ``delivered`` or ``failed`` (with `error`).

        The record's redirect says so (if it still names this delivery). False,
        changing nothing, when the claim is stale.
        """

    async def pending_deliveries(self) -> int:
        """How many deliveries are queued (claimed or not)."""


@runtime_checkable
class InProcessStore(Store, Protocol):
    """A store in this process that answers without I/O (`MemoryStore`).

    The manager reads it without a coroutine and keeps no copies of final
    records beside it (the store's own are as close).
    """

    def peek(self, task_id: str) -> TaskRecord | None:
        """`get` without the coroutine: a fresh record, or None."""

    def kept(self, task_id: str) -> Row | None:
        """A terminal task's row as the store keeps it, or None.

        None when the task is not terminal here (running, unknown or past its
        retention). A row never changes: nothing to copy.
        """

    def save_now(self, batch: WriteBatch) -> None:
        """`save` without the coroutine."""
