"""The Redis pub/sub bus: commands to one instance, events to all.

One pub/sub connection per bus, subscribed to this instance's command channel
and the shared events channel (names in `taskward.stores.keys`); a reader task
dispatches what arrives to the handlers. Publishing uses the ordinary command
client. Pub/sub keeps nothing for a disconnected listener, so the durable truth
stays in the store: after every reconnect the reader resubscribes and awaits
`BusHandlers.on_reconnect()`, which re-reads what may have been missed.

The listener never dies: malformed, oversized, unsigned (when a secret is
set), forged or stale messages are logged (one warning each) and skipped,
handler errors are logged, and a lost connection is re-established with
capped, jittered exponential backoff (redis-py's backoff), for as long as the
bus is open. The wire formats, signatures and size limits are described in
`taskward.bus._redis_codec`. Our own events come back to us on the shared
channel; they are recognised by their first bytes and dropped unread.

`has_peers()` lets the manager skip building events nobody would receive: the
bus counts subscribers of the events channel (PUBSUB NUMSUB, summed over the
nodes of a Cluster) every few seconds, and a new instance announces itself with
an empty events message as soon as it has subscribed. Any events message with
a sender line counts as a sign of peers, before its signature is checked (a
bus that wants no events checks none): a forged one can only make this bus
publish when nobody listens, which is also what it does when unsure.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import TYPE_CHECKING, Any

from .._ids import check_id
from .._redis import (
    UNAVAILABLE_ERRORS,
    ExponentialWithJitterBackoff,
    PubSub,
    RedisCluster,
    RedisConnection,
    raise_if_cancelling,
    rx,
    unavailable,
)
from ..stores.keys import Keys
from ._redis_codec import (
    MAX_COMMAND_SIZE,
    MAX_EVENTS_SIZE,
    BadMessage,
    decode_command,
    decode_events,
    encode_command,
    encode_events,
    events_body,
    sender_of,
    split_events,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from .._records import TaskEvent
    from .base import BusHandlers

__all__ = ["COMMAND_OPS", "RedisBus"]

logger = logging.getLogger(__name__)

#: Command ops a bus accepts unless told otherwise: a stop, and a redirect set elsewhere on
#: a task of the instance (a wake-up: the redirect is in the store already).
COMMAND_OPS = frozenset({"stop", "redirect"})
#: Seconds to wait for the server to confirm the subscriptions.
SUBSCRIBE_TIMEOUT = 10.0
RECONNECT_BASE = 0.05
RECONNECT_CAP = 5.0
#: Seconds between two counts of the instances listening to events.
PEER_REFRESH = 5.0
_PREVIEW = 80
# How an events message with no events ends, signed or not (JSON has no raw newline):
# a peer announcing itself, nothing to check or decode.
_ANNOUNCEMENT = b"\n[]"

_PEER_COUNT_ERRORS: tuple[type[Exception], ...] = (rx.RedisError, OSError)


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _fits(payload: str, limit: int) -> bool:
    """Whether `payload` takes at most `limit` bytes of UTF-8 (measured only when it may not)."""
    return len(payload) <= limit // 4 or len(payload.encode()) <= limit


class RedisBus:
    """A `Bus` over Redis pub/sub. Needs a `RedisConnection` (`taskward._redis.connect`).

    With `secret`, commands and events are signed (HMAC-SHA256) and unsigned,
    forged or stale ones are ignored with a warning; every instance of a
    service must then share the secret. `command_ops` are the command ops
    accepted. `max_message_size` bounds, in bytes, the events messages this
    bus decodes and sends (larger flushes go as several messages); it must be
    the same on every instance, and at least `MAX_COMMAND_SIZE`.
    The connection is not closed by `aclose()`: it belongs to whoever made it.
    """

    def __init__(
        self,
        connection: RedisConnection,
        *,
        keys: Keys | None = None,
        secret: str | bytes | None = None,
        command_ops: Iterable[str] = COMMAND_OPS,
        max_message_size: int = MAX_EVENTS_SIZE,
    ) -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        if secret is not None and not secret:
            raise ValueError("secret must not be empty (pass None for unsigned messages)")
        if type(max_message_size) is not int:
            raise TypeError(f"max_message_size must be an int, not {type(max_message_size)}")
        if max_message_size < MAX_COMMAND_SIZE:
            raise ValueError(f"max_message_size must be at least {MAX_COMMAND_SIZE} bytes")
        self._connection = connection
        self._keys = keys if keys is not None else Keys()
        self._secret: bytes | None = secret
        self._ops = frozenset(command_ops)
        self._max_size = max_message_size
        self._state = _State.NEW
        self._instance_id = ""
        self._own_line = b""  # the first line of our own events messages
        self._handlers: BusHandlers | None = None
        self._command_channel = ""
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._backoff = ExponentialWithJitterBackoff(cap=RECONNECT_CAP, base=RECONNECT_BASE)
        self._resubscribed: set[str] = set()
        self._peers = True  # unknown counts as yes: never drop events someone may wait for
        self._peer_messages = 0

    def __repr__(self) -> str:
        return f"<RedisBus {self._instance_id or '-'} {self._state.value}>"

    # -- lifecycle -------------------------------------------------------------

    async def start(self, instance_id: str, handlers: BusHandlers) -> None:
        if self._state is not _State.NEW:
            raise RuntimeError(f"this bus is {self._state.value}; a bus starts once")
        self._instance_id = check_id(instance_id, "instance_id")
        self._handlers = handlers
        self._command_channel = self._keys.command_channel(instance_id)
        self._own_line = f"{instance_id}\n".encode()
        try:
            self._pubsub = await self._subscribe()
            await self._count_peers()
            # Announce ourselves, so running peers publish their events from now on.
            hello = encode_events(instance_id, (), self._keys.events, self._secret, time.time())
            await self._connection.client.publish(self._keys.events, hello)
        except BaseException as exc:
            await self._discard_pubsub()
            if isinstance(exc, UNAVAILABLE_ERRORS):
                raise unavailable(exc) from exc
            raise
        self._state = _State.RUNNING
        self._reader = asyncio.create_task(self._read_loop(), name=f"taskward-bus-{instance_id}")
        self._watcher = asyncio.create_task(
            self._watch_peers(), name=f"taskward-peers-{instance_id}"
        )

    async def aclose(self) -> None:
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        tasks = {t for t in (self._reader, self._watcher) if t is not None}
        try:
            while tasks:
                # Cancel again while they run on: redis-py can lose a cancellation
                # (see `raise_if_cancelling`); the loops also stop once closed.
                for task in tasks:
                    task.cancel()
                _, tasks = await asyncio.wait(tasks, timeout=0.1)
        finally:
            await self._discard_pubsub()
        self._reader = self._watcher = None

    # -- sending ---------------------------------------------------------------

    def has_peers(self) -> bool:
        """Whether another instance may be listening to events (True when unsure)."""
        return self._peers

    def encode(self, events: Sequence[TaskEvent]) -> str | None:
        """The one message `publish` would send, for a store to publish with its write.

        Signed when the bus has a secret. None when there is nothing to send,
        or when the events need more than one message: `publish` them then.
        """
        if not events or self._state is not _State.RUNNING:
            return None
        payload = encode_events(
            self._instance_id, events, self._keys.events, self._secret, time.time()
        )
        return payload if _fits(payload, self._max_size) else None

    async def publish(self, events: Sequence[TaskEvent]) -> None:
        if not events or self._state is not _State.RUNNING:
            return
        payload = self.encode(events)
        messages = [payload] if payload is not None else self._split(events)
        client = self._connection.client
        try:
            for message in messages:
                await client.publish(self._keys.events, message)
        except UNAVAILABLE_ERRORS as exc:
            raise unavailable(exc) from exc

    def _split(self, events: Sequence[TaskEvent]) -> list[str]:
        """`events` as messages within the size limit (a large flush)."""
        messages, thin = split_events(
            self._instance_id, events, self._keys.events, self._secret, time.time(), self._max_size
        )
        if thin:
            logger.warning(
                "%d event(s) too large for one bus message (%d bytes) were sent without "
                "their record and data; other instances read those from the store",
                thin,
                self._max_size,
            )
        return messages

    async def send_command(self, instance_id: str, command: dict[str, Any]) -> None:
        """Publish `command` to the instance's channel.

        A command is a wake-up for state already in the store, so an outage is
        logged, not raised: the owner re-reads its stop requests on a timer.
        """
        check_id(instance_id, "instance_id")
        channel = self._keys.command_channel(instance_id)
        payload = encode_command(command, channel, self._secret, time.time())
        try:
            await self._connection.client.publish(channel, payload)
        except UNAVAILABLE_ERRORS as exc:
            logger.warning(
                "could not send %r to instance %s: %s", command.get("op"), instance_id, exc
            )

    # -- listening -------------------------------------------------------------

    async def _subscribe(self) -> PubSub:
        """A pub/sub connection subscribed to our two channels, confirmed by the server."""
        pubsub = await self._connection.open_pubsub()
        try:
            channels = {self._command_channel, self._keys.events}
            await pubsub.subscribe(*channels)
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                while channels:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        channels.discard(_text(message["channel"]))
                    else:
                        self._dispatch(message)
        except BaseException:
            await _close_quietly(pubsub)
            raise
        return pubsub

    async def _discard_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await _close_quietly(pubsub)

    async def _read_loop(self) -> None:
        failures = 0
        while self._state is _State.RUNNING:
            try:
                raise_if_cancelling()
                pubsub = self._pubsub
                if pubsub is None:
                    self._pubsub = await self._subscribe()
                    logger.info(
                        "bus of %s reconnected after %d attempt(s)", self._instance_id, failures
                    )
                    failures = 0
                    await self._reconnected()
                    continue
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    # redis-py reconnected by itself and resubscribed: tell the handlers
                    # once the server has confirmed both channels again.
                    self._resubscribed.add(_text(message["channel"]))
                    if self._resubscribed >= {self._command_channel, self._keys.events}:
                        self._resubscribed.clear()
                        logger.info("bus of %s resubscribed", self._instance_id)
                        await self._reconnected()
                    continue
                self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelling(exc)
                if isinstance(exc, UnicodeDecodeError):
                    # A client that decodes responses fails inside redis-py on a
                    # message that is not UTF-8: garbage, not a bug of ours.
                    logger.warning(
                        "bus of %s is ignoring a message its client cannot decode (%s); "
                        "reconnecting",
                        self._instance_id,
                        exc,
                    )
                elif not isinstance(exc, UNAVAILABLE_ERRORS):
                    logger.exception("bus reader of %s failed; reconnecting", self._instance_id)
                elif failures == 0:
                    logger.warning(
                        "bus of %s lost its connection (%s); reconnecting", self._instance_id, exc
                    )
                failures += 1
                self._peers = True
                self._resubscribed.clear()
                await self._discard_pubsub()
                await asyncio.sleep(self._backoff.compute(failures))

    async def _reconnected(self) -> None:
        handlers = self._handlers
        if handlers is None:  # pragma: no cover - set before the reader starts
            return
        try:
            await handlers.on_reconnect()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("on_reconnect handler failed")

    def _dispatch(self, message: dict[str, Any]) -> None:
        handlers = self._handlers
        if handlers is None or message.get("type") != "message":
            return
        data = message["data"]
        if isinstance(data, str):  # from a client that decodes responses
            data = data.encode()
        channel = _text(message["channel"])
        if channel == self._keys.events:
            if not data.startswith(self._own_line):  # ours come back to us: dropped unread
                self._on_events_message(handlers, channel, data)
        elif channel == self._command_channel:
            self._on_command_message(handlers, channel, data)

    def _on_events_message(self, handlers: BusHandlers, channel: str, data: bytes) -> None:
        try:
            if len(data) > self._max_size:
                raise BadMessage(f"{len(data)} bytes, over the limit of {self._max_size}")
            sender_of(data)
            self._peer_messages += 1
            self._peers = True
            if not handlers.wants_events() or data.endswith(_ANNOUNCEMENT):
                return
            events = decode_events(events_body(data, channel, self._secret, time.time()))
        except BadMessage as exc:
            self._ignore(channel, exc, data)
            return
        if events:
            try:
                handlers.on_events(events)
            except Exception:
                logger.exception("bus handler failed on events from %s", channel)

    def _on_command_message(self, handlers: BusHandlers, channel: str, data: bytes) -> None:
        try:
            if len(data) > MAX_COMMAND_SIZE:
                raise BadMessage(f"{len(data)} bytes, over the limit of {MAX_COMMAND_SIZE}")
            command = decode_command(data, channel, self._secret, time.time(), self._ops)
        except BadMessage as exc:
            self._ignore(channel, exc, data)
            return
        try:
            handlers.on_command(command)
        except Exception:
            logger.exception("bus handler failed on a command from %s", channel)

    def _ignore(self, channel: str, exc: BadMessage, data: bytes) -> None:
        logger.warning(
            "bus of %s is ignoring a message on %s: %s: %r",
            self._instance_id,
            channel,
            exc,
            data[:_PREVIEW],
        )

    # -- peers -----------------------------------------------------------------

    async def _count_peers(self) -> None:
        """Count the events channel's subscribers; no peers if we are the only one."""
        seen = self._peer_messages
        client = self._connection.client
        channel = self._keys.events
        if isinstance(client, RedisCluster):
            reply = await client.pubsub_numsub(channel, target_nodes=RedisCluster.ALL_NODES)
        else:
            reply = await client.pubsub_numsub(channel)
        count = sum(int(n) for _, n in reply)
        if count > 1:
            self._peers = True
        elif self._peer_messages == seen:  # no peer spoke while we were counting
            self._peers = False

    async def _watch_peers(self) -> None:
        while self._state is _State.RUNNING:
            await asyncio.sleep(PEER_REFRESH)
            try:
                await self._count_peers()
                raise_if_cancelling()
            except _PEER_COUNT_ERRORS as exc:
                raise_if_cancelling(exc)
                self._peers = True
                logger.debug("could not count bus peers: %s", exc)


async def _close_quietly(pubsub: PubSub) -> None:
    try:
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.debug("error closing a pub/sub connection", exc_info=True)
