"""The Redis (or Valkey) store: records shared by every instance of a service.

Works on a standalone server, behind Sentinel and on Cluster (every key of a
prefix shares one hash tag, see `taskward.stores.keys`). Performance rests on
three choices:

- `save()` is one round trip whatever the batch holds: one Lua call per chunk
  of records (all chunks in one pipeline), which writes the hashes, moves the
  indexes, appends output, applies retention server-side and, in the last
  chunk, publishes the bus's events about the batch.
- The Lua scripts make the rules atomic where they matter: a record already
  terminal in Redis is never overwritten (the script reads its status first),
  a stop request is set only on a running task without one, and a task is
  marked lost only while still running.
- Every write is idempotent (hash fields, sorted-set members keyed by id or
  seq), so a whole pipeline or script call can be re-sent after a connection
  error or a failover (`taskward._redis.call_with_retry`).

Retention: a terminal record gets a TTL of `result_ttl` (its output too) and a
member in the ``finished`` zset, scored by finish time. Every write, every
listing and count, and every heartbeat trims that zset: records finished
before ``now - result_ttl`` and the oldest beyond `max_finished` are deleted
with their output and index entries. So memory stays bounded under endless
load, listings never SCAN, and while any instance is alive (heartbeating,
busy or idle) the ids of expired records leave every index within a
heartbeat, the index keys going with their last member. Index keys carry no
TTL: the same sorted set may hold a task that runs for days. With no
instance left, the indexes keep at most `max_finished` finished ids (their
records expire on their own) until an instance starts again and trims them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any, TypeVar

from .._live import STATUS, V_RUNNING
from .._records import OutputChunk, TaskRecord, TaskStatus, dump_json
from .._redis import (
    DEFAULT_RETRY_BUDGET,
    UNAVAILABLE_ERRORS,
    Client,
    call_with_retry,
    rx,
    unavailable,
)
from . import _redis_scripts as lua
from ._redis_codec import (
    decode_chunk,
    decode_cursor,
    decode_delivery,
    decode_flat,
    decode_hash,
    encode_batch,
    encode_chunk,
    encode_cursor,
    encode_record,
    text,
)
from .base import Delivery, InstanceInfo, Page, Retention, WriteBatch
from .keys import Keys

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from .base import Row

__all__ = ["RedisStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Records per save-script call (each call blocks the server while it runs, ~20 us a record).
SAVE_CHUNK = 256
#: Output chunks per ZADD inside the save script (Lua's unpack limit is ~8000 values).
OUTPUT_GROUP = 1000
#: Finished records one write may delete (age and count each), tasks one reap call may mark.
TRIM_BUDGET = 500
REAP_BUDGET = 500
#: Index entries one query call may examine before handing back to Python.
QUERY_BUDGET = 2000
#: How long the reaper's lock lives if its holder dies mid-way (ms).
REAP_LOCK_MS = 30_000

_RUNNING = TaskStatus.RUNNING


class _Script:
    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


_SAVE = _Script(lua.SAVE)
_QUERY = _Script(lua.QUERY)
_COUNTS = _Script(lua.COUNTS)
_RUNNING_BY_ITEM = _Script(lua.RUNNING_BY_ITEM)
_REQUEST_STOP = _Script(lua.REQUEST_STOP)
_HEARTBEAT = _Script(lua.HEARTBEAT)
_INSTANCES = _Script(lua.INSTANCES)
_REAP = _Script(lua.REAP)
_RETIRE = _Script(lua.RETIRE)
_SET_REDIRECT = _Script(lua.SET_REDIRECT)
_CLAIM_DELIVERIES = _Script(lua.CLAIM_DELIVERIES)
_RETRY_DELIVERY = _Script(lua.RETRY_DELIVERY)
_END_DELIVERY = _Script(lua.END_DELIVERY)
_SCRIPTS = (
    _SAVE,
    _QUERY,
    _COUNTS,
    _RUNNING_BY_ITEM,
    _REQUEST_STOP,
    _HEARTBEAT,
    _INSTANCES,
    _REAP,
    _RETIRE,
    _SET_REDIRECT,
    _CLAIM_DELIVERIES,
    _RETRY_DELIVERY,
    _END_DELIVERY,
)
_STATUSES = tuple(TaskStatus)


class RedisStore:
    """A `Store` in Redis or Valkey.

    `client` is a ``redis.asyncio.Redis`` or ``RedisCluster`` (see
    `taskward._redis.connect`); the store does not own it, so `aclose()` leaves
    it open for whoever made it. `retry_budget` is how long one operation keeps
    retrying through an outage or failover before `StoreUnavailable`; a server
    that does not answer within the client's socket timeout fails the operation
    at once (see "Timeouts" in `taskward._redis`).
    """

    def __init__(
        self,
        client: Client,
        *,
        keys: Keys | None = None,
        retention: Retention | None = None,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
    ) -> None:
        if retry_budget <= 0:
            raise ValueError("retry_budget must be positive")
        self.client = client
        self.keys = keys if keys is not None else Keys()
        self.retention = retention if retention is not None else Retention()
        self.retry_budget = retry_budget
        self.reap_budget = REAP_BUDGET
        self._head_keys = [
            self.keys.all,
            self.keys.finished,
            self.keys.instances,
            self.keys.heartbeats,
        ]
        self._layout = self.keys.script_layout()
        self._delivery_keys = self.keys.delivery_keys()

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self.keys.prefix!r}>"

    # -- plumbing ------------------------------------------------------------

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call_with_retry(operation, budget=self.retry_budget)
        except UNAVAILABLE_ERRORS as exc:
            raise unavailable(exc) from exc

    async def _load_scripts(self) -> None:
        for script in _SCRIPTS:
            await self.client.script_load(script.source)

    def _evalsha_args(self, script: _Script, keys: Sequence[str], args: Sequence[str]) -> list[Any]:
        all_keys = [*self._head_keys, *keys]
        return ["EVALSHA", script.sha, len(all_keys), *all_keys, *self._layout, *args]

    async def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[str]) -> Any:
        return await self._eval_command(self._evalsha_args(script, keys, args))

    async def _eval_command(self, command: list[Any]) -> Any:
        """Run one EVALSHA command; load the scripts and resend it on NOSCRIPT."""
        return await self._send(lambda: self.client.execute_command(*command))

    async def _pipeline(self, commands: list[list[Any]]) -> list[Any]:
        """Send `commands` in one round trip (no MULTI); reload scripts and resend on NOSCRIPT."""

        async def send() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()

        return await self._send(send)

    async def _send(self, send: Callable[[], Awaitable[T]]) -> T:
        """`send()` with retries; after a NOSCRIPT (a restarted or failed-over server),
        load the scripts and send again."""

        async def operation() -> T:
            try:
                return await send()
            except rx.NoScriptError:
                await self._load_scripts()
                return await send()

        return await self._call(operation)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Check the server answers and load the scripts."""

        async def operation() -> None:
            await self.client.ping()
            await self._load_scripts()

        await self._call(operation)

    async def aclose(self) -> None:
        """Nothing to release: the client belongs to whoever created it."""

    def _trim_args(self, now: float | None = None) -> list[str]:
        """What the scripts' ``trim`` takes: max_finished, cutoff, budget."""
        ret = self.retention
        cutoff = (now or time.time()) - ret.result_ttl
        return [str(ret.max_finished), repr(cutoff), str(TRIM_BUDGET)]

    # -- writes --------------------------------------------------------------

    def _save_commands(
        self,
        records: Sequence[Row],
        outputs: dict[str, list[OutputChunk]],
        now: float,
        notice: str | None = None,
    ) -> list[list[Any]]:
        ret = self.retention
        head = [
            str(int(ret.result_ttl * 1000)),
            str(ret.max_finished),
            repr((now or time.time()) - ret.result_ttl),
            str(ret.max_output),
            str(TRIM_BUDGET),
        ]
        encoded = [encode_record(rec) for rec in records]
        groups: list[Any] = []
        for task_id, chunks in outputs.items():
            kept = chunks[-ret.max_output :]
            for i in range(0, len(kept), OUTPUT_GROUP):
                members: list[str] = []
                for c in kept[i : i + OUTPUT_GROUP]:
                    members += (str(c.seq), encode_chunk(c))
                groups.append([task_id, members])
        # Outputs and the notice go with the last chunk, after every record they
        # may be about.
        last = max(len(encoded) - 1, 0) // SAVE_CHUNK * SAVE_CHUNK
        tail = [] if notice is None else [self.keys.events, notice]
        return [
            self._evalsha_args(
                _SAVE,
                self._delivery_keys,
                [
                    *head,
                    encode_batch(encoded[i : i + SAVE_CHUNK], groups if i == last else []),
                    *(tail if i == last else ()),
                ],
            )
            for i in range(0, last + 1, SAVE_CHUNK)
        ]

    async def save(self, batch: WriteBatch) -> None:
        if not batch:
            return
        # Everything is read from the live records here, before the first await.
        commands = self._save_commands(batch.records, batch.outputs, batch.now, batch.notice)
        if len(commands) == 1:
            await self._eval_command(commands[0])
        else:
            await self._pipeline(commands)

    # -- reads ---------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord | None:
        key = self.keys.task(task_id)

        async def operation() -> Any:
            return await self.client.hgetall(key)

        return decode_hash(task_id, await self._call(operation))

    async def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        if not task_ids:
            return []
        replies = await self._pipeline([["HGETALL", self.keys.task(t)] for t in task_ids])
        return [decode_hash(t, r) for t, r in zip(task_ids, replies, strict=True)]

    async def query(
        self,
        *,
        user_id: str | None = None,
        item_id: str | None = None,
        status: TaskStatus | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        after_score, after_id = decode_cursor(cursor) if cursor is not None else ("+inf", "")
        keys = self.keys
        index_keys: list[str] = []
        filters: list[str] = []
        for field, value, key in (
            ("u", user_id, keys.user_index),
            ("i", item_id, keys.item_index),
            ("s", None if status is None else TaskStatus(status).value, keys.status_index),
        ):
            if value is not None:
                index = key(value)
                index_keys.append(index)
                filters += (field, value, index)
        if not index_keys:
            index_keys.append(keys.all)
        records: list[TaskRecord] = []
        while True:
            reply = await self._eval(
                _QUERY,
                index_keys,
                [
                    *self._trim_args(),
                    after_score,
                    after_id,
                    str(limit - len(records)),
                    str(QUERY_BUDGET),
                    *filters,
                ],
            )
            more, after_score, after_id = int(reply[0]), text(reply[1]), text(reply[2])
            for i in range(3, len(reply), 2):
                rec = decode_flat(text(reply[i]), reply[i + 1])
                if rec is not None:
                    records.append(rec)
            if not more:
                return Page(records, None)
            if len(records) >= limit:
                return Page(records, encode_cursor(after_score, after_id))

    async def counts(self) -> dict[TaskStatus, int]:
        reply = await self._eval(_COUNTS, (), [*self._trim_args(), *(s.value for s in _STATUSES)])
        return dict(zip(_STATUSES, map(int, reply), strict=True))

    async def running_ids_by_item(self, item_id: str) -> list[str]:
        keys = (self.keys.item_index(item_id), self.keys.status_index(_RUNNING.value))
        return [text(t) for t in await self._eval(_RUNNING_BY_ITEM, keys, [item_id])]

    async def read_output(
        self, task_id: str, after: int = 0, limit: int = 1000
    ) -> list[OutputChunk]:
        if limit < 1:
            return []
        key = self.keys.output(task_id)

        async def operation() -> Any:
            return await self.client.zrangebyscore(
                key, f"({int(after)}", "+inf", start=0, num=limit
            )

        return [decode_chunk(m) for m in await self._call(operation)]

    # -- stops and liveness --------------------------------------------------

    async def request_stop(
        self, task_id: str, at: float, user_id: str | None = None
    ) -> TaskRecord | None:
        reply = await self._eval(_REQUEST_STOP, (), [task_id, repr(at), user_id or ""])
        return decode_flat(task_id, reply)

    async def pending_stops(self, instance_id: str) -> list[str]:
        key = self.keys.instance_stops(instance_id)

        async def operation() -> Any:
            return await self.client.smembers(key)

        return sorted(text(t) for t in await self._call(operation))

    async def heartbeat(
        self, instance_id: str, ttl: float, running: Sequence[Row] | None = None
    ) -> bool:
        # No old liveness value means it had lapsed, or the server lost its data.
        # (A liveness thread only ever extends the key.)
        now = time.time()
        beat = self._evalsha_args(
            _HEARTBEAT,
            (),
            [instance_id, str(max(1, int(ttl * 1000))), repr(now), *self._trim_args(now)],
        )
        alive = [r for r in running if r[STATUS] == V_RUNNING] if running else []
        if not alive:
            return bool(await self._eval_command(beat))
        replies = await self._pipeline([beat, *self._save_commands(alive, {}, 0.0)])
        return bool(replies[0])

    async def reap(self, now: float) -> list[TaskRecord]:
        ret = self.retention
        token = os.urandom(12).hex()
        args = [
            token,
            str(REAP_LOCK_MS),
            repr(now),
            str(int(ret.result_ttl * 1000)),
            str(ret.max_finished),
            repr(now - ret.result_ttl),
            str(self.reap_budget),
        ]
        lost: list[TaskRecord] = []
        while True:
            reply = await self._eval(_REAP, (self.keys.reaper_lock, *self._delivery_keys), args)
            state = text(reply[0])
            for i in range(1, len(reply), 2):
                rec = decode_flat(text(reply[i]), reply[i + 1])
                if rec is not None:
                    lost.append(rec)
            if state != "more":
                if lost:
                    logger.warning(
                        "marked %d task(s) lost: their instance stopped heartbeating", len(lost)
                    )
                return lost

    async def retire(self, instance_id: str) -> None:
        await self._eval(_RETIRE, (), [instance_id])

    async def instances(self) -> list[InstanceInfo]:
        reply = await self._eval(_INSTANCES, (), ())
        return [
            InstanceInfo(
                text(reply[i]),
                bool(reply[i + 1]),
                int(reply[i + 2]),
                float(text(reply[i + 3])) if reply[i + 3] else None,
            )
            for i in range(0, len(reply), 4)
        ]

    # -- redirects and the delivery queue -------------------------------------

    async def set_redirect(
        self, task_id: str, target: dict[str, Any], at: float, user_id: str | None = None
    ) -> TaskRecord | None:
        reply = await self._eval(
            _SET_REDIRECT,
            self._delivery_keys,
            [task_id, user_id or "", dump_json(target), repr(at)],
        )
        return decode_flat(task_id, reply)

    async def claim_deliveries(self, now: float, lease: float, limit: int) -> list[Delivery]:
        reply = await self._eval(
            _CLAIM_DELIVERIES,
            self._delivery_keys[:2],
            [repr(now), repr(now + lease), str(int(limit)), os.urandom(12).hex()],
        )
        return [decode_delivery(raw) for raw in reply]

    async def retry_delivery(self, delivery: Delivery, due: float, error: str) -> bool:
        reply = await self._eval(
            _RETRY_DELIVERY,
            self._delivery_keys[:2],
            [delivery.delivery_id, delivery.token, repr(due), error],
        )
        return bool(reply)

    async def end_delivery(
        self, delivery: Delivery, delivered: bool, error: str | None, at: float
    ) -> bool:
        reply = await self._eval(
            _END_DELIVERY,
            self._delivery_keys[:2],
            [
                delivery.delivery_id,
                delivery.token,
                "delivered" if delivered else "failed",
                repr(at),
                error or "",
            ],
        )
        return bool(reply)

    async def pending_deliveries(self) -> int:
        key = self.keys.deliveries

        async def operation() -> Any:
            return await self.client.zcard(key)

        return int(await self._call(operation))
