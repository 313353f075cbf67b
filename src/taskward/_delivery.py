"""Delivering finished tasks' outcomes to channels: the durable half of redirects.

A redirect's delivery is recorded in the store before anything is sent (see
"Redirects" in `taskward.stores.base`); this module sends it. One `Deliverer`
per manager claims due deliveries with a lease, hands each to the adapter of
its platform and records what happened:

- delivered: taken off the queue, the record's redirect says ``delivered``;
- a transient failure (5xx, 408, 429, a timeout, a refused connection): due
  again after a backoff (doubling from `BACKOFF_FIRST` to `BACKOFF_MAX`, with
  jitter) or after the delay the platform asked for, whichever is later;
- a permanent one (another 4xx, no adapter, an attempt that would start past
  `delivery_timeout` after the delivery was enqueued): ``failed``, with the
  error on the record.

A claim is a lease of three attempt timeouts: if this instance dies mid-attempt
(kill -9), the delivery is due again when the lease ends and another instance
claims it. Every attempt carries the delivery's id, the same on every retry and
on every instance, as its idempotency key (the Standard Webhooks ``webhook-id``),
so a receiver that deduplicates by it sees each delivery once. Platforms
without idempotency keys (Slack, Discord, Telegram) may see a message twice in
one case only: the instance dies after the platform accepted the request and
before the store heard of it.

The adapters (HTTP, httpx) are a surface: `taskward.redirect`, imported the
first time a platform is needed, never at import time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ._records import TaskStatus, dump_json
from ._sync import SYNC_TIMEOUT
from ._truncate import cut_text
from .errors import StoreUnavailable
from .stores.base import redirect_target

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._reads import Reader
    from ._sync import Flusher
    from ._table import LocalTable
    from .bus.base import Bus
    from .stores.base import Delivery, Store

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "Deliverer",
    "DeliveryResult",
    "PlatformAdapter",
    "RedirectMessage",
    "Redirector",
    "render",
]

logger = logging.getLogger(__name__)

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 60.0
#: How often an idle deliverer looks for due deliveries (s).
POLL_INTERVAL = 0.25


@dataclass(slots=True, frozen=True)
class DeliveryResult:
    """What one attempt achieved. Build with `delivered()`, `retry()` or `rejected()`."""

    ok: bool
    transient: bool = False
    retry_after: float | None = None
    error: str = ""

    @classmethod
    def delivered(cls) -> DeliveryResult:
        return cls(True)

    @classmethod
    def retry(cls, error: str, retry_after: float | None = None) -> DeliveryResult:
        """A failure worth trying again (after `retry_after` seconds, if the platform said)."""
        return cls(False, True, retry_after, error)

    @classmethod
    def rejected(cls, error: str) -> DeliveryResult:
        """A failure that another attempt would repeat."""
        return cls(False, False, None, error)


def render(delivery: Delivery) -> str:
    """The text a chat platform shows for a finished task."""
    if delivery.status is TaskStatus.COMPLETED:
        result = delivery.result
        if isinstance(result, str):
            return result
        if result is None:
            return f"{delivery.name or 'task'} completed"
        return dump_json(result)
    what = delivery.name or f"task {delivery.task_id}"
    if delivery.error is None:
        return f"{what} {delivery.status.value}"
    return f"{what} {delivery.status.value}: {delivery.error.type}: {delivery.error.message}"


@dataclass(slots=True, frozen=True)
class RedirectMessage:
    """What an adapter sends: the delivery and its text (already cut to `max_chars`)."""

    delivery: Delivery
    text: str

    @property
    def idempotency_key(self) -> str:
        """The delivery's id: the same on every attempt, on every instance."""
        return self.delivery.delivery_id

    def text_within(self, limit: int, *, utf16: bool = False) -> str:
        """The text cut to the platform's own `limit` too (see `taskward._truncate`)."""
        return cut_text(self.text, limit, utf16=utf16)

    def payload(self) -> dict[str, Any]:
        """The outcome as JSON, for receivers that want more than the text."""
        d = self.delivery
        return {
            "task_id": d.task_id,
            "name": d.name,
            "status": d.status.value,
            "channel_id": d.channel_id,
            "user_id": d.user_id,
            "item_id": d.item_id,
            "finished_at": d.finished_at,
            "text": self.text,
            "result": d.result if d.status is TaskStatus.COMPLETED else None,
            "error": None if d.error is None else d.error.to_dict(),
        }


class PlatformAdapter(Protocol):
    """Sends a `RedirectMessage` to one platform.

    `deliver` answers with a `DeliveryResult` for every failure it understands
    (HTTP statuses, timeouts, refused connections); an exception it raises
    counts as a transient failure.
    """

    async def deliver(self, message: RedirectMessage) -> DeliveryResult: ...

    async def aclose(self) -> None: ...


class Deliverer:
    """The delivery loop of one manager: claims due deliveries and sends them."""

    def __init__(
        self,
        store: Store,
        *,
        adapters: Mapping[str, PlatformAdapter] | None,
        delivery_timeout: float,
        attempt_timeout: float,
        concurrency: int = 32,
    ) -> None:
        self._store = store
        self._given = dict(adapters or {})
        self._made: dict[str, PlatformAdapter] = {}
        self._timeout = delivery_timeout
        self._attempt_timeout = attempt_timeout
        self.lease = 3 * attempt_timeout
        self._concurrency = concurrency
        self._inflight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._kicked = False  # kick() since the last claim
        self._refill = False  # the last claim took every free slot
        self._loop_task: asyncio.Task[None] | None = None

    def knows(self, platform: str) -> bool:
        """Whether deliveries to `platform` have an adapter here (given or registered)."""
        if platform in self._given:
            return True
        from .redirect import registered_platforms  # a surface: imported when needed

        return platform in registered_platforms()

    def adapter(self, platform: str) -> PlatformAdapter | None:
        adapter = self._given.get(platform) or self._made.get(platform)
        if adapter is None:
            from .redirect import create_adapter  # a surface: imported when needed

            try:
                adapter = self._made[platform] = create_adapter(platform)
            except LookupError:
                return None
        return adapter

    @property
    def running(self) -> bool:
        return self._loop_task is not None

    def start(self) -> None:
        """Start the loop (once); it runs until `aclose`."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._run(), name="taskward-delivery"
            )

    def kick(self) -> None:
        """Look for due deliveries now (one may just have been enqueued)."""
        self._kicked = True
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            free = self._concurrency - len(self._inflight)
            claimed: list[Delivery] = []
            if free > 0:
                try:
                    claimed = await self._store.claim_deliveries(time.time(), self.lease, free)
                except StoreUnavailable as exc:
                    logger.debug("deliveries not claimed: %s", exc)
                except Exception:
                    logger.exception("claiming deliveries failed; will retry")
            for delivery in claimed:
                task = asyncio.get_running_loop().create_task(self._attempt(delivery))
                self._inflight.add(task)
                task.add_done_callback(self._attempt_done)
            if claimed and len(claimed) == free:
                # More may be due: claim again once half the slots are free (one
                # claim per batch, not per finished attempt), or when kicked.
                self._refill = True
            await self._nap()

    async def _nap(self) -> None:
        """Wait for a kick, for half the slots to be free after a claim that filled them
        (more may be due), or for the next poll (a retry falling due, another instance's
        enqueue)."""
        try:
            async with asyncio.timeout(POLL_INTERVAL):
                while True:
                    await self._wake.wait()
                    self._wake.clear()
                    if self._kicked:
                        break
                    if self._refill and len(self._inflight) <= self._concurrency // 2:
                        break
        except TimeoutError:
            pass
        self._refill = self._kicked = False

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._refill:
            self._wake.set()  # a slot is free, and more may be due
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("a delivery attempt failed to record its outcome: %s", exc)

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            adapter = self.adapter(delivery.platform)
        except (ValueError, ImportError) as exc:
            # Not configured here (its environment variables, or httpx): another
            # instance may be, so this is retried like any transient failure.
            adapter, result = None, DeliveryResult.retry(f"no adapter here: {exc}")
        else:
            if adapter is None:
                error = f"no adapter for platform {delivery.platform!r}"
                await self._end(delivery, False, error)
                return
        if adapter is not None:
            result = await self._send(adapter, delivery)
        await self._settle(delivery, result)

    async def _send(self, adapter: PlatformAdapter, delivery: Delivery) -> DeliveryResult:
        message = RedirectMessage(delivery, cut_text(render(delivery), delivery.max_chars))
        try:
            async with asyncio.timeout(self._attempt_timeout):
                return await adapter.deliver(message)
        except TimeoutError:
            return DeliveryResult.retry(f"no answer within {self._attempt_timeout:g} s")
        except Exception as exc:  # an adapter's bug or an error it did not map
            # Its message may hold a URL with a token: the type only, the rest in the log.
            logger.exception("the %r adapter raised", delivery.platform)
            return DeliveryResult.retry(f"the adapter raised {type(exc).__name__}")

    async def _settle(self, delivery: Delivery, result: DeliveryResult) -> None:
        """Record an attempt's outcome: delivered, failed, or due again after a backoff."""
        now = time.time()
        if result.ok:
            await self._end(delivery, True, None)
            return
        if not result.transient:
            await self._end(delivery, False, result.error)
            return
        backoff = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (delivery.attempts - 1))
        delay = max(backoff * random.uniform(0.8, 1.2), result.retry_after or 0.0)
        if now + delay > delivery.enqueued_at + self._timeout:
            error = f"gave up after {delivery.attempts} attempt(s): {result.error}"
            logger.warning(
                "delivery %s of task %s failed: %s", delivery.delivery_id, delivery.task_id, error
            )
            await self._end(delivery, False, error)
            return
        logger.info(
            "delivery %s of task %s: %s; retrying in %.1f s",
            delivery.delivery_id,
            delivery.task_id,
            result.error,
            delay,
        )
        if not await self._store.retry_delivery(delivery, now + delay, result.error):
            logger.warning(
                "delivery %s: lease lost before its retry was recorded", delivery.delivery_id
            )

    async def _end(self, delivery: Delivery, delivered: bool, error: str | None) -> None:
        if not await self._store.end_delivery(delivery, delivered, error, time.time()):
            logger.warning(
                "delivery %s: lease lost before its outcome was recorded", delivery.delivery_id
            )

    async def aclose(self, timeout: float) -> None:
        """Stop claiming; give attempts under way `timeout` s, then cancel them (their
        leases run out and another instance takes them)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            self._loop_task = None
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=max(timeout, 0.1))
            for task in list(self._inflight):
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
        # The adapters given to the manager are its own too: closed with it.
        for adapter in [*self._given.values(), *self._made.values()]:
            await adapter.aclose()
        self._made.clear()


class Redirector:
    """Sets tasks' redirects: the store records the target (and enqueues the delivery
    at once when the task has ended), then the owner and the deliverer are told."""

    def __init__(
        self,
        *,
        instance_id: str,
        table: LocalTable,
        reader: Reader,
        store: Store,
        bus: Bus,
        flusher: Flusher,
        deliverer: Deliverer,
    ) -> None:
        self._instance_id = instance_id
        self._table = table
        self._reader = reader
        self._store = store
        self._bus = bus
        self._flusher = flusher
        self._deliverer = deliverer

    async def redirect(
        self, task_id: str, channel_id: str, platform: str, max_chars: int, user_id: str | None
    ) -> bool:
        """Redirect the task (its arguments checked); False if not found or not the user's."""
        if await self._reader.lookup(task_id, user_id) is None:
            return False
        if self._table.rows.get(task_id) is not None:
            await self._flusher.sync(SYNC_TIMEOUT)  # the store must know the task first
        now = time.time()
        target = redirect_target(channel_id, platform, max_chars, now)
        stored = await self._store.set_redirect(task_id, target, now, user_id)
        if stored is None:
            return False
        self._reader.note_redirect(task_id)
        if stored.status is TaskStatus.RUNNING and stored.instance_id != self._instance_id:
            await self._bus.send_command(stored.instance_id, {"op": "redirect", "task_id": task_id})
        self._deliverer.start()
        self._deliverer.kick()
        return True
