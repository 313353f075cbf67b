"""RedisBus against a real server: delivery, self-skip, bad messages, signatures, reconnects."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio
from redis.asyncio.client import PubSub

from taskward._records import TaskEvent, TaskRecord, TaskStatus
from taskward._redis import RedisConnection, connect
from taskward.bus._redis_codec import (
    MAX_COMMAND_SIZE,
    MAX_EVENTS_SIZE,
    decode_events,
    encode_command,
    encode_events,
    sender_of,
)
from taskward.bus.redis import RedisBus
from taskward.errors import StoreUnavailable
from taskward.stores.keys import Keys

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from servers import ServerProcess

pytestmark = pytest.mark.redis

WAIT = 5.0


class Recorder:
    """BusHandlers that remember what arrived and let a test wait for it."""

    def __init__(self, *, wants: bool = True) -> None:
        self.commands: list[dict[str, Any]] = []
        self.events: list[TaskEvent] = []
        self.reconnects = 0
        self.wants = wants
        self._changed = asyncio.Event()

    def on_command(self, command: dict[str, Any]) -> None:
        self.commands.append(command)
        self._changed.set()

    def on_events(self, events: Sequence[TaskEvent]) -> None:
        self.events.extend(events)
        self._changed.set()

    def wants_events(self) -> bool:
        return self.wants

    async def on_reconnect(self) -> None:
        self.reconnects += 1
        self._changed.set()

    async def until(self, check: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def connection(redis_url: str) -> AsyncIterator[RedisConnection]:
    conn = connect(redis_url)
    yield conn
    await conn.aclose()


@pytest.fixture
async def start_bus(
    connection: RedisConnection, key_prefix: str
) -> AsyncIterator[Callable[..., Awaitable[tuple[RedisBus, Recorder]]]]:
    """Start a bus for an instance id on the test's prefix; all are closed afterwards."""
    buses: list[RedisBus] = []

    async def start(
        instance_id: str,
        *,
        secret: str | None = None,
        wants: bool = True,
        conn: RedisConnection | None = None,
    ) -> tuple[RedisBus, Recorder]:
        bus = RedisBus(conn or connection, keys=Keys(key_prefix), secret=secret)
        handlers = Recorder(wants=wants)
        buses.append(bus)
        await bus.start(instance_id, handlers)
        return bus, handlers

    yield start
    for bus in buses:
        await bus.aclose()


def event(kind: str = "finished", task_id: str = "t1", **kw: Any) -> TaskEvent:
    record = TaskRecord(
        task_id,
        TaskStatus.COMPLETED,
        name="tool",
        user_id="u",
        instance_id="a",
        created_at=1.5,
        updated_at=2.5,
        finished_at=2.5,
        result={"x": [1, 2]},
        metadata={"m": 1},
    )
    kw.setdefault("record", record)
    return TaskEvent(kind, task_id, TaskStatus.COMPLETED, 2.5, "u", "chat", **kw)


async def test_commands_reach_their_instance_only(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
) -> None:
    a, ha = await start_bus("a")
    _, hb = await start_bus("b")
    _, hc = await start_bus("c")
    await a.send_command("b", {"op": "stop", "task_id": "t1"})
    await hb.until(lambda: bool(hb.commands))
    assert hb.commands == [{"op": "stop", "task_id": "t1"}]
    await a.send_command("nobody", {"op": "stop", "task_id": "t2"})  # never raises
    await asyncio.sleep(0.05)
    assert ha.commands == hc.commands == []


async def test_events_reach_every_other_instance(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
) -> None:
    a, ha = await start_bus("a")
    _, hb = await start_bus("b")
    _, hc = await start_bus("c")
    sent = [event(), event("output", "t2", record=None, data="hi\nthere", seq=3)]
    await a.publish(sent)
    await a.publish([])  # nothing to send
    await hb.until(lambda: len(hb.events) == 2)
    await hc.until(lambda: len(hc.events) == 2)
    assert hb.events == sent
    assert hc.events == sent
    await asyncio.sleep(0.05)
    assert ha.events == []  # a bus skips its own messages


async def test_a_bus_that_wants_no_events_decodes_none(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, _ = await start_bus("a")
    _, hb = await start_bus("b", wants=False)
    decoded: list[bytes] = []

    def spy(body: bytes) -> list[TaskEvent]:
        decoded.append(body)
        return decode_events(body)

    monkeypatch.setattr("taskward.bus.redis.decode_events", spy)
    await a.publish([event()])
    await a.send_command("b", {"op": "stop", "task_id": "x"})  # ordered after the event
    await hb.until(lambda: bool(hb.commands))
    assert hb.events == [] and decoded == []


async def test_has_peers_follows_the_instances_listening(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
) -> None:
    a, ha = await start_bus("alone")
    assert not a.has_peers()
    b, _ = await start_bus("second")
    assert b.has_peers()
    await b.send_command("alone", {"op": "stop", "task_id": "x"})
    await ha.until(lambda: bool(ha.commands))  # the announcement came first
    assert a.has_peers()


async def test_has_peers_turns_false_when_the_peers_leave(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("taskward.bus.redis.PEER_REFRESH", 0.02)
    a, _ = await start_bus("a")
    b, _ = await start_bus("b")
    await asyncio.sleep(0.1)
    assert a.has_peers()
    await b.aclose()
    deadline = time.monotonic() + WAIT
    while a.has_peers() and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a flag
        await asyncio.sleep(0.02)
    assert not a.has_peers()


async def test_an_unexpected_reader_error_reconnects(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, _ = await start_bus("a")
    real = PubSub.get_message
    failing: list[PubSub] = []

    async def flaky(self: PubSub, *args: Any, **kwargs: Any) -> Any:
        if self in failing:
            failing.remove(self)
            raise RuntimeError("parser bug")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(PubSub, "get_message", flaky)
    b, hb = await start_bus("b")
    failing.append(b._pubsub)  # type: ignore[arg-type]
    await a.send_command("b", {"op": "stop", "task_id": "wake"})  # the read that fails
    await hb.until(lambda: hb.reconnects >= 1)
    await a.send_command("b", {"op": "stop", "task_id": "t"})
    await hb.until(lambda: {"op": "stop", "task_id": "t"} in hb.commands)
    assert any("reader of b failed" in r.getMessage() for r in caplog.records)


async def test_malformed_messages_are_skipped_and_the_listener_lives(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    connection: RedisConnection,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = Keys(key_prefix)
    _, hb = await start_bus("b")
    client = connection.client
    bad_events = [
        "no sender line",
        "x\nnot json",
        "x\n{}",
        "x\n[1]",
        'x\n[["finished","t",7,1.0,null,null,null,null,null]]',
        'x\n[["finished","t","weird",1.0,null,null,null,null,null]]',
        'x\n[["finished","t","completed",1.0,null,null,[1],null,null]]',
        'x\n[["finished","t","completed","soon",null,null,null,null,null]]',
    ]
    bad_commands = ["not json", "[1, 2]", '{"task_id": "t"}', '{"op": "explode"}', "v1 1 2 3\n{}"]
    with caplog.at_level(logging.WARNING, logger="taskward.bus.redis"):
        for payload in bad_events:
            await client.publish(keys.events, payload)
        for payload in bad_commands:
            await client.publish(keys.command_channel("b"), payload)
        good = encode_command({"op": "stop", "task_id": "after"}, "", None, 0.0)
        await client.publish(keys.command_channel("b"), good)
        await hb.until(lambda: bool(hb.commands))
    assert hb.commands == [{"op": "stop", "task_id": "after"}]
    assert hb.events == []
    ignored = [r for r in caplog.records if "ignoring a message" in r.getMessage()]
    assert len(ignored) == len(bad_events) + len(bad_commands)


async def test_a_failing_handler_does_not_stop_the_listener(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, _ = await start_bus("a")
    _, hb = await start_bus("b")
    calls = 0
    original = hb.on_command

    def explode_once(command: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        original(command)

    hb.on_command = explode_once  # type: ignore[method-assign]
    await a.send_command("b", {"op": "stop", "task_id": "1"})
    await a.send_command("b", {"op": "stop", "task_id": "2"})
    await hb.until(lambda: bool(hb.commands))
    assert hb.commands == [{"op": "stop", "task_id": "2"}]
    assert any("handler failed" in r.getMessage() for r in caplog.records)


# -- signatures --------------------------------------------------------------------------


async def test_signed_commands_pass_and_others_are_refused(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    connection: RedisConnection,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = Keys(key_prefix).command_channel("b")
    signer, _ = await start_bus("a", secret="s3cret")
    _, hb = await start_bus("b", secret="s3cret")
    unsigned, _ = await start_bus("u")
    forger, _ = await start_bus("f", secret="guess")
    client = connection.client
    with caplog.at_level(logging.WARNING, logger="taskward.bus.redis"):
        await unsigned.send_command("b", {"op": "stop", "task_id": "unsigned"})
        await forger.send_command("b", {"op": "stop", "task_id": "forged"})
        stale = encode_command(
            {"op": "stop", "task_id": "stale"}, channel, b"s3cret", time.time() - 120
        )
        await client.publish(channel, stale)
        elsewhere = Keys(key_prefix).command_channel("c")
        replayed = encode_command(
            {"op": "stop", "task_id": "replay"}, elsewhere, b"s3cret", time.time()
        )
        await client.publish(channel, replayed)
        await signer.send_command("b", {"op": "stop", "task_id": "signed"})
        await hb.until(lambda: bool(hb.commands))
    assert hb.commands == [{"op": "stop", "task_id": "signed"}]
    reasons = [r.getMessage() for r in caplog.records if "ignoring a message" in r.getMessage()]
    assert len(reasons) == 4
    assert any("unsigned" in r for r in reasons)
    assert any("stale" in r for r in reasons)
    assert sum("bad signature" in r for r in reasons) == 2


async def test_a_bus_without_secret_accepts_signed_commands(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
) -> None:
    signer, _ = await start_bus("a", secret=b"s3cret")
    _, hb = await start_bus("b")
    await signer.send_command("b", {"op": "stop", "task_id": "t"})
    await hb.until(lambda: bool(hb.commands))


def test_empty_secret_is_refused(connection: RedisConnection) -> None:
    with pytest.raises(ValueError, match="secret"):
        RedisBus(connection, secret="")


# -- lifecycle and failures -----------------------------------------------------------------------


async def test_lifecycle(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]], connection: RedisConnection
) -> None:
    bus, handlers = await start_bus("a")
    assert "running" in repr(bus)
    with pytest.raises(RuntimeError, match="starts once"):
        await bus.start("a", handlers)
    await bus.aclose()
    await bus.aclose()
    await bus.publish([event()])  # closed: nothing is sent
    assert bus.encode([event()]) is None
    with pytest.raises(RuntimeError):
        await bus.start("a", handlers)
    never = RedisBus(connection)
    await never.aclose()
    with pytest.raises(ValueError, match="instance_id"):
        await RedisBus(connection).start("bad id", handlers)


async def test_start_fails_cleanly_when_redis_is_down(private_redis: ServerProcess) -> None:
    conn = connect(private_redis.url)
    private_redis.stop()
    try:
        bus = RedisBus(conn)
        with pytest.raises(StoreUnavailable):
            await bus.start("a", Recorder())
        await bus.aclose()
    finally:
        await conn.aclose()


@pytest.fixture
async def private_connection(private_redis: ServerProcess) -> AsyncIterator[RedisConnection]:
    conn = connect(private_redis.url)
    yield conn
    await conn.aclose()


async def test_reconnects_after_client_kill(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    private_connection: RedisConnection,
) -> None:
    a, _ = await start_bus("a", conn=private_connection)
    _, hb = await start_bus("b", conn=private_connection)
    await private_connection.client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await hb.until(lambda: hb.reconnects >= 1)
    await a.send_command("b", {"op": "stop", "task_id": "after"})
    await hb.until(lambda: bool(hb.commands))
    await a.publish([event()])
    await hb.until(lambda: bool(hb.events))


async def test_reconnects_after_a_server_restart(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    private_connection: RedisConnection,
    private_redis: ServerProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, ha = await start_bus("a", conn=private_connection)
    private_redis.stop()
    with caplog.at_level(logging.WARNING, logger="taskward.bus.redis"):
        await asyncio.sleep(0.5)  # the reader retries with backoff meanwhile
        await a.send_command("a", {"op": "stop", "task_id": "lost"})  # logged, not raised
        with pytest.raises(StoreUnavailable):
            await a.publish([event()])
    assert any("could not send" in r.getMessage() for r in caplog.records)
    private_redis.restart()
    await ha.until(lambda: ha.reconnects >= 1)
    b, _ = await start_bus("b", conn=private_connection)
    await b.send_command("a", {"op": "stop", "task_id": "after"})
    await ha.until(lambda: bool(ha.commands))
    assert ha.commands == [{"op": "stop", "task_id": "after"}]


def test_event_messages_are_compact() -> None:
    payload = encode_events("inst", [event()], "", None, 0.0)
    sender, _, body = payload.partition("\n")
    assert sender == "inst"
    assert " " not in body and "null" in body
    assert '"progress"' not in body  # empty record fields are left out


# -- signed events ------------------------------------------------------------------------


async def test_signed_events_pass_and_others_are_refused(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    connection: RedisConnection,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = Keys(key_prefix)
    signer, _ = await start_bus("a", secret="s3cret")
    b, hb = await start_bus("b", secret="s3cret")
    _, hc = await start_bus("c")  # no secret: takes signed and unsigned events unchecked
    unsigned, _ = await start_bus("u")
    forger, _ = await start_bus("f", secret="guess")
    sent = [event("finished", "signed")]
    with caplog.at_level(logging.WARNING, logger="taskward.bus.redis"):
        await unsigned.publish([event("finished", "unsigned")])
        await forger.publish([event("finished", "forged")])
        stale = encode_events("x", [event("finished", "stale")], keys.events, b"s3cret", 0.0)
        await connection.client.publish(keys.events, stale)
        await signer.publish(sent)
        await hb.until(lambda: bool(hb.events))
        await hc.until(lambda: len(hc.events) == 4)
    assert hb.events == sent
    assert [e.task_id for e in hc.events] == ["unsigned", "forged", "stale", "signed"]
    reasons = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("bus of b is ignoring")
    ]
    assert len(reasons) == 3, reasons
    assert sum("unsigned events" in r for r in reasons) == 1
    assert sum("bad signature" in r for r in reasons) == 1
    assert sum("stale events" in r for r in reasons) == 1
    assert b.encode(sent) is not None
    assert b.encode(sent).split("\n")[1].startswith("v1 ")  # type: ignore[union-attr]


async def test_deeply_nested_messages_are_ignored_with_one_warning(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    connection: RedisConnection,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = Keys(key_prefix)
    a, _ = await start_bus("a")
    _, hb = await start_bus("b")
    deep = "[" * 60_000  # far deeper than the parser goes, within the command size limit
    with caplog.at_level(logging.WARNING):
        await connection.client.publish(keys.events, f"x\n{deep}")
        await connection.client.publish(keys.command_channel("b"), deep)
        await connection.client.publish(keys.command_channel("b"), f"v1 1 2\n{deep}")
        await a.send_command("b", {"op": "stop", "task_id": "after"})
        await hb.until(lambda: bool(hb.commands))
    bus_records = [r for r in caplog.records if r.name.startswith("taskward")]
    bus_records = [r for r in bus_records if not r.getMessage().startswith("bus of a ")]
    assert [r.levelno for r in bus_records] == [logging.WARNING] * 3
    assert all("nested too deeply" in r.getMessage() for r in bus_records)
    assert all(r.exc_info is None for r in bus_records)


# -- sizes ------------------------------------------------------------------------------


async def test_messages_over_the_size_limits_are_ignored_unread(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    connection: RedisConnection,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = Keys(key_prefix)
    a, _ = await start_bus("a")
    _, hb = await start_bus("b")
    read: list[bytes] = []

    def spy(data: bytes) -> str:
        read.append(data)
        return sender_of(data)

    monkeypatch.setattr("taskward.bus.redis.sender_of", spy)
    entry = [["finished", "t1", "completed", 1.0, None, None, None, None, None]]
    padded = "[" + " " * MAX_EVENTS_SIZE + json.dumps(entry)[1:]
    with caplog.at_level(logging.WARNING, logger="taskward.bus.redis"):
        await connection.client.publish(keys.events, f"x\n{padded}")  # well-formed, too big
        stop = json.dumps({"op": "stop", "task_id": "t1", "pad": "x" * MAX_COMMAND_SIZE})
        await connection.client.publish(keys.command_channel("b"), stop)
        await a.publish([event()])
        await a.send_command("b", {"op": "stop", "task_id": "after"})
        await hb.until(lambda: bool(hb.commands) and bool(hb.events))
    assert hb.commands == [{"op": "stop", "task_id": "after"}]
    assert hb.events == [event()]
    assert [d[:2] for d in read if not d.endswith(b"\n[]")] == [b"a\n"]  # a's event only
    reasons = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bus of b ")]
    assert len(reasons) == 2
    assert all("ignoring a message" in r and "over the limit" in r for r in reasons)


async def test_a_large_flush_goes_as_several_messages_within_the_limit(
    connection: RedisConnection,
    key_prefix: str,
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = Keys(key_prefix)
    limit = MAX_COMMAND_SIZE
    sender = RedisBus(connection, keys=keys, secret="s", max_message_size=limit)
    await sender.start("a", Recorder())
    try:
        _, hb = await start_bus("b", secret="s")
        records = [TaskRecord(f"t{i}", TaskStatus.COMPLETED, result="r" * 1000) for i in range(200)]
        flush = [TaskEvent.of("finished", rec, 1.0) for rec in records]
        big = TaskRecord("big", TaskStatus.COMPLETED, result="x" * limit)
        flush.append(TaskEvent.of("finished", big, 2.0))
        assert sender.encode(flush) is None  # too big for one message: publish splits it
        async with connection.client.pubsub() as raw:
            await raw.subscribe(keys.events)
            with caplog.at_level(logging.WARNING, logger="taskward.bus.redis"):
                await sender.publish(flush[:-1])  # split, each event whole
                await hb.until(lambda: len(hb.events) == len(flush) - 1)
                assert not caplog.records
                hb.events.clear()
                await sender.publish(flush)
            await hb.until(lambda: len(hb.events) == len(flush))
            sizes = []
            data = b""
            async with asyncio.timeout(WAIT):
                while b'"big"' not in data:  # the last event of the second flush
                    message = await raw.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None:
                        data = message["data"]
                        sizes.append(len(data))
    finally:
        await sender.aclose()
    assert hb.events[:-1] == flush[:-1]
    assert hb.events[-1] == TaskEvent("finished", "big", TaskStatus.COMPLETED, 2.0)  # thin
    assert len(sizes) > 1 and max(sizes) <= limit
    assert any("without their record and data" in r.getMessage() for r in caplog.records)


def test_max_message_size_is_checked(connection: RedisConnection) -> None:
    with pytest.raises(ValueError, match="at least"):
        RedisBus(connection, max_message_size=MAX_COMMAND_SIZE - 1)
    with pytest.raises(TypeError):
        RedisBus(connection, max_message_size=1e9)  # type: ignore[arg-type]


# -- our own messages, peers --------------------------------------------------------------


async def test_our_own_messages_are_dropped_unread(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    connection: RedisConnection,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = Keys(key_prefix)
    a, ha = await start_bus("a", secret="s")
    _, hb = await start_bus("b", secret="s")

    read: list[bytes] = []

    def spy(data: bytes) -> str:
        read.append(data)
        return sender_of(data)

    monkeypatch.setattr("taskward.bus.redis.sender_of", spy)
    garbage = [b"a\n" + b"[" * 100_000, b"a\nnot signed", b"a\n" + b"x" * MAX_EVENTS_SIZE]
    with caplog.at_level(logging.WARNING, logger="taskward.bus.redis"):
        await a.publish([event()])
        for payload in garbage:
            await connection.client.publish(keys.events, payload)
        await a.send_command("a", {"op": "stop", "task_id": "after"})  # read after those
        await a.send_command("b", {"op": "stop", "task_id": "after"})
        await ha.until(lambda: bool(ha.commands))
        await hb.until(lambda: bool(hb.commands))
    assert ha.events == []
    assert hb.events == [event()]  # what a sent is fine for others
    # Read by b only (its event and two of the garbage; the third is over the size
    # limit): a dropped them all by their first bytes.
    assert len([d for d in read if not d.endswith(b"\n[]")]) == 3
    ignored = [r.getMessage() for r in caplog.records if "ignoring a message" in r.getMessage()]
    assert all(r.startswith("bus of b ") for r in ignored)  # b refuses the garbage posing as a
    assert len(ignored) == 3


async def test_garbage_does_not_fool_the_peer_count(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    connection: RedisConnection,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = Keys(key_prefix)
    alone, handlers = await start_bus("alone", secret="s")
    assert not alone.has_peers()
    with caplog.at_level(logging.DEBUG, logger="taskward.bus.redis"):
        # Nothing without a sender line, nor anything over the limit, counts as a peer.
        for garbage in (
            b"",
            b"no sender",
            b"\xff\xfe",
            b"x" * 5000,
            b"x\n" + b" " * MAX_EVENTS_SIZE,
        ):
            await connection.client.publish(keys.events, garbage)
        await alone.send_command("alone", {"op": "stop", "task_id": "1"})
        await handlers.until(lambda: len(handlers.commands) == 1)
        assert not alone.has_peers()
        # A sender line might be a peer's (unknown counts as yes) until the next count.
        monkeypatch.setattr("taskward.bus.redis.PEER_REFRESH", 0.02)
        for garbage in (b"intruder\n" + b"[" * 100_000, b"intruder\n[]", b"intruder\nv1 x\n[]x"):
            await connection.client.publish(keys.events, garbage)
        await alone.send_command("alone", {"op": "stop", "task_id": "2"})
        await handlers.until(lambda: len(handlers.commands) == 2)
        deadline = time.monotonic() + WAIT
        while alone.has_peers() and time.monotonic() < deadline:  # noqa: ASYNC110 - a flag
            await asyncio.sleep(0.02)
    assert not alone.has_peers()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if "could not count" in r.getMessage()]


async def test_a_failing_events_handler_does_not_stop_the_listener(
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    connection: RedisConnection,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, _ = await start_bus("a")
    _, hb = await start_bus("b")
    calls = 0
    original = hb.on_events

    def explode_once(events: Sequence[TaskEvent]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        original(events)

    hb.on_events = explode_once  # type: ignore[method-assign]
    await a.publish([event("finished", "1")])
    await connection.client.publish(Keys(key_prefix).events, "x\n[ ]")  # no events: no call
    await a.publish([event("finished", "2")])
    await hb.until(lambda: bool(hb.events))
    assert [e.task_id for e in hb.events] == ["2"]
    assert calls == 2
    assert any("handler failed on events" in r.getMessage() for r in caplog.records)


async def test_a_client_that_decodes_responses_works_too(
    redis_url: str,
    connection: RedisConnection,
    key_prefix: str,
    start_bus: Callable[..., Awaitable[tuple[RedisBus, Recorder]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    conn = connect(client)
    try:
        a, ha = await start_bus("a", secret="s", conn=conn)
        b, hb = await start_bus("b", secret="s")
        with caplog.at_level(logging.WARNING, logger="taskward.bus.redis"):
            await client.publish(Keys(key_prefix).events, "x\n" + "[" * 50_000)
            await client.publish(Keys(key_prefix).events, "a\n" + "[" * 50_000)  # its own
            await b.publish([event()])
            await b.send_command("a", {"op": "stop", "task_id": "t"})
            await ha.until(lambda: bool(ha.events) and bool(ha.commands))
            await a.publish([event("output", "t2", record=None, data="hi", seq=1)])
            await hb.until(lambda: bool(hb.events))
        assert ha.events == [event()]
        assert ha.commands == [{"op": "stop", "task_id": "t"}]
        assert [e.task_id for e in hb.events] == ["t2"]
        mine = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bus of a ")]
        assert len(mine) == 1 and "unsigned events" in mine[0]

        # Bytes that are not UTF-8 make redis-py fail for such a client: the bus says
        # so in one warning, reconnects, and goes on.
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="taskward.bus.redis"):
            await connection.client.publish(Keys(key_prefix).events, b"x\n\xff\xfe")
            await ha.until(lambda: ha.reconnects >= 1)
            await b.send_command("a", {"op": "stop", "task_id": "after"})
            await ha.until(lambda: len(ha.commands) == 2)
        warnings = [r for r in caplog.records if r.getMessage().startswith("bus of a ")]
        assert len(warnings) == 1 and "cannot decode" in warnings[0].getMessage()
        assert warnings[0].levelno == logging.WARNING and warnings[0].exc_info is None
    finally:
        await a.aclose()
        await client.aclose()
