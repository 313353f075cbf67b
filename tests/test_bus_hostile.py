"""Managers on a real server against hostile traffic on their bus channels.

Anyone who can PUBLISH on the server can write on the events channel and on
every instance's command channel. What they write there must change nothing:
with a shared `secret`, forged events reach no event stream and answer no
stop; with or without one, garbage of any shape is logged (one warning per
message and listener, no traceback) and skipped, nothing reaches the loop's
exception handler, and the listeners go on honouring the real commands and
events that follow.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from typing import TYPE_CHECKING, Any

import pytest

from helpers import forever, no_unawaited_coroutines
from taskward import StopOutcome, TaskStatus
from taskward.bus._redis_codec import MAX_COMMAND_SIZE, MAX_EVENTS_SIZE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio

    from distributed_helpers import ManagerFactory
    from taskward import TaskEvent, TaskManager
    from taskward._events import EventStream
    from taskward.stores.keys import Keys

pytestmark = pytest.mark.redis

SECRET = "s"
STREAM_WAIT = 10.0
BUS_LOGGER = "taskward.bus.redis"


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def sign(secret: str, channel: str, stamp: str, *parts: str) -> str:
    """HMAC-SHA256 over ``<channel>\\n<stamp>\\n`` and `parts`, as
    `taskward.bus._redis_codec` documents it (computed independently of it)."""
    message = f"{channel}\n{stamp}\n{''.join(parts)}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_event(secret: str, channel: str, sender: str, body: str, stamp: str) -> str:
    """An events message signed with `secret`."""
    return f"{sender}\nv1 {stamp} {sign(secret, channel, stamp, sender, chr(10), body)}\n{body}"


def signed_command(secret: str, channel: str, body: str, stamp: str) -> str:
    return f"v1 {stamp} {sign(secret, channel, stamp, body)}\n{body}"


def finished_event(task_id: str, status: str = "cancelled") -> list[Any]:
    """A well-formed `finished` event saying `task_id` ended as `status` (a lie here)."""
    now = time.time()
    record = {"task_id": task_id, "status": status, "finished_at": now, "updated_at": now}
    return ["finished", task_id, status, now, None, None, record, None, None]


async def obstinate(started: asyncio.Event, refused: asyncio.Event, release: asyncio.Event) -> str:
    """Runs until `release`, refusing every cancellation (and setting `refused`)."""
    started.set()
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            refused.set()
    return "released"


async def quick() -> str:
    return "done"


async def collect_until(stream: EventStream, *last: str) -> list[TaskEvent]:
    """The stream's events until every task in `last` has had a `finished` one."""
    seen: list[TaskEvent] = []
    waiting = set(last)
    async with asyncio.timeout(STREAM_WAIT):
        async for event in stream:
            seen.append(event)
            if event.kind == "finished":
                waiting.discard(event.task_id)
            if not waiting:
                return seen
    raise AssertionError("the stream ended")  # pragma: no cover - streams end only on close


def ignored_messages(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "ignoring a message" in r.getMessage()]


def assert_quietly_ignored(caplog: pytest.LogCaptureFixture, expected: int) -> None:
    """`expected` bus warnings, each one line without a traceback, and no error logged."""
    ignored = ignored_messages(caplog)
    assert len(ignored) == expected, [r.getMessage()[:200] for r in ignored]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in ignored)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage()[:200] for r in errors]


# -- forged events ---------------------------------------------------------------------


@pytest.fixture
async def pair(start_manager: ManagerFactory) -> AsyncIterator[tuple[TaskManager, TaskManager]]:
    """Two instances sharing `SECRET`: ``inst-a`` and ``inst-b``."""
    a = await start_manager("inst-a", secret=SECRET, stop_timeout=2.0)
    b = await start_manager("inst-b", secret=SECRET, stop_timeout=2.0)
    yield a, b


async def test_forged_finished_events_reach_no_stream_and_answer_no_stop(
    pair: tuple[TaskManager, TaskManager],
    keys: Keys,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = pair
    started, refused, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    task_id = await a.create_task(obstinate(started, refused, release))
    await started.wait()
    try:
        async with (
            a.events(kinds=["finished"]) as on_a,
            b.events(kinds=["finished"]) as on_b,
        ):
            stopper = asyncio.create_task(b.stop_task(task_id))
            await refused.wait()  # B listens for the task's finish from before its command
            body = compact([finished_event(task_id)])
            stamp = f"{time.time():.3f}"
            forgeries = [
                f"mallory\n{body}",  # unsigned
                signed_event("a-guess", keys.events, "mallory", body, stamp),  # wrong secret
                signed_event("a-guess", keys.events, "inst-a", body, stamp),  # posing as A
                f"v1 {stamp} {'0' * 64}\n{body}",  # a signature line where the sender goes
            ]
            with caplog.at_level(logging.WARNING, logger=BUS_LOGGER):
                for payload in forgeries:
                    assert await redis_client.publish(keys.events, payload) == 2

                # B's stop is not answered by a forged event: A confirmed nothing.
                result = await stopper
                assert result.outcome is StopOutcome.PENDING, result
                assert result.status is TaskStatus.RUNNING

                # Real events, published after the forgeries, reach both sides (over
                # one subscription, after them): A's task finishes, then one of B's.
                release.set()
                final = await a.wait(task_id, timeout=STREAM_WAIT)
                assert final.status is TaskStatus.COMPLETED
                other = await b.create_task(quick())
                on_a_seen = await collect_until(on_a, other)
                on_b_seen = await collect_until(on_b, task_id)
    finally:
        release.set()  # the task refuses cancellation: only this ends it
    assert [(e.task_id, e.status) for e in on_a_seen] == [
        (task_id, TaskStatus.COMPLETED),  # A's own, told locally
        (other, TaskStatus.COMPLETED),  # B's, through the bus
    ]
    assert [(e.task_id, e.status) for e in on_b_seen if e.task_id == task_id] == [
        (task_id, TaskStatus.COMPLETED)
    ]
    record = await b.get_record(task_id)
    assert record is not None and record.status is TaskStatus.COMPLETED
    # A drops the one posing as itself unread; every other forgery is refused by both.
    assert_quietly_ignored(caplog, 7)
    reasons = [r.getMessage() for r in ignored_messages(caplog)]
    assert sum("unsigned events" in r for r in reasons) == 4
    assert sum("bad signature" in r for r in reasons) == 3


async def test_events_between_instances_are_signed(
    pair: tuple[TaskManager, TaskManager],
    keys: Keys,
    redis_client: redis.asyncio.Redis,
) -> None:
    """What an instance writes on the events channel (here: with its store writes)."""
    a, _ = pair
    payloads: list[str] = []
    async with redis_client.pubsub() as pubsub:
        await pubsub.subscribe(keys.events)
        task_id = await a.create_task(quick())
        await a.wait(task_id)
        async with asyncio.timeout(STREAM_WAIT):
            while not any(task_id in p for p in payloads):
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    payloads.append(message["data"].decode())
    for payload in payloads:
        sender, header, body = payload.split("\n", 2)
        assert sender == "inst-a"
        version, stamp, _ = header.split(" ")
        assert version == "v1"
        assert payload == signed_event(SECRET, keys.events, sender, body, stamp)
        assert abs(float(stamp) - time.time()) < 60  # signed when sent, not at some other time
    kinds = [event[0] for p in payloads for event in json.loads(p.split("\n", 2)[2])]
    assert "finished" in kinds


# -- a flood of garbage ----------------------------------------------------------------------


def random_payloads(rng: random.Random, count: int) -> list[bytes]:
    """Random bytes of random lengths, some starting with a plausible sender line."""
    out = []
    for i in range(count):
        noise = rng.randbytes(rng.randrange(0, 2000))
        out.append(b"intruder\n" + noise if i % 2 else noise)
    return out


def malformed_bodies(task_id: str) -> list[bytes]:
    """Bodies of events messages that no bus may accept, with or without a secret."""
    good = finished_event(task_id, "completed")
    wrong_types = [
        [7, *good[1:]],  # kind
        [good[0], 7, *good[2:]],  # task_id
        [*good[:2], "bogus", *good[3:]],  # status
        [*good[:3], "yesterday", *good[4:]],  # at
        [*good[:3], True, *good[4:]],  # at as a boolean
        [*good[:4], 5, *good[5:]],  # user_id
        [*good[:6], [1], *good[7:]],  # record
        [*good[:6], {"status": "cancelled"}, *good[7:]],  # record without task_id
        [*good[:6], {"task_id": "another", "status": "cancelled"}, *good[7:]],  # of another task
        [*good[:6], {"task_id": task_id, "error": 5}, *good[7:]],
        [*good[:6], {"task_id": task_id, "created_at": "noon"}, *good[7:]],
        [*good[:6], {"task_id": task_id, "status": "exploded"}, *good[7:]],
        [*good[:6], {"task_id": task_id, "metadata": [1]}, *good[7:]],
        [*good[:6], {"task_id": task_id, "progress": False}, *good[7:]],
        [*good[:7], 5, good[8]],  # data
        [*good[:8], "seq"],  # seq
        good[:8],  # too short
        [*good, None],  # too long
    ]
    return [
        b"",
        b"not json",
        b"\xff\xfe\x80 not utf-8",
        b'"a string"',
        b"null",
        b"{}",
        b"[1]",
        b"[[1, 2, 3]]",
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b"[" + b"1" * 5000 + b"]",  # an integer longer than Python parses
        *(compact([event]).encode() for event in wrong_types),
    ]


def garbage_events(task_id: str, rng: random.Random) -> list[bytes]:
    """Events messages refused by every bus, with or without a secret."""
    bodies = malformed_bodies(task_id)
    return [
        b"",
        b"no sender line",
        b"\n" + compact([finished_event(task_id, "completed")]).encode(),  # an empty sender
        b"x" * 2000 + b"\n[]",  # a sender line longer than any id
        b"\xff\xfe\n[]",  # a sender that is not UTF-8
        *(b"intruder\n" + body for body in bodies),
        *(b"intruder\nv1 1.0 " + b"0" * 64 + b"\n" + body for body in bodies[:4]),
        *(b"inst-a\n" + body for body in bodies[:4]),  # posing as A (which drops them)
        *(b"inst-b\n" + body for body in bodies[:4]),  # posing as B
        b"intruder\nv1 not-a-signature\n[]x",
        b"intruder\nv1 " + b"9" * 200 + b"\n[]x",  # an endless signature line
        b"intruder\n" + b"[" * (3 * 1024 * 1024),  # under the size limit, decoded, refused
        b"intruder\n" + b" " * MAX_EVENTS_SIZE + b"[]x",  # over it: refused unread
        *random_payloads(rng, 40),
    ]


def garbage_commands(task_id: str, rng: random.Random) -> list[bytes]:
    """Commands refused by every bus, with or without a secret."""
    return [
        b"",
        b"not json",
        b"\xff\xfe\x80 not utf-8",
        b"[1, 2, 3]",
        b'"a string"',
        b"null",
        b"[" * 100_000,
        b'{"op":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"op": "explode", "task_id": "x"}',
        b'{"op": 5}',
        b'{"task_id": "' + task_id.encode() + b'"}',
        b"v1 not-a-signature",
        b"v1 1 2 3\n{}",
        b"v1 1.0 " + b"0" * 64 + b"\n" + b"[" * 100_000,
        b"v1 " + b"9" * 200 + b"\n{}",
        b'{"op": "stop", "task_id": "'
        + task_id.encode()
        + b'", "pad": "'
        + b"x" * MAX_COMMAND_SIZE
        + b'"}',  # over the size limit: refused unread, though well-formed
        *random_payloads(rng, 40),
    ]


def forged_events(keys: Keys, task_id: str) -> list[bytes]:
    """Well-formed events messages that lie: refused only by a bus with a secret."""
    body = compact([finished_event(task_id, "completed")])
    now = time.time()
    stamp = f"{now:.3f}"
    return [
        f"intruder\n{body}".encode(),
        signed_event("a-guess", keys.events, "intruder", body, stamp).encode(),
        signed_event(SECRET, keys.events, "intruder", body, f"{now - 3600:.3f}").encode(),
        signed_event(SECRET, keys.events, "intruder", body, f"{now + 3600:.3f}").encode(),
        signed_event(SECRET, keys.command_channel("inst-a"), "intruder", body, stamp).encode(),
        # Signed for one sender, sent as another (as if B had said it).
        signed_event(SECRET, keys.events, "intruder", body, stamp)
        .replace("intruder\n", "inst-b\n", 1)
        .encode(),
        # Tampered: a genuine signature over another body.
        signed_event(SECRET, keys.events, "intruder", compact([]), stamp)
        .replace(compact([]), body)
        .encode(),
        f"intruder\nv1 nan {'0' * 64}\n{body}".encode(),
    ]


def forged_commands(keys: Keys, task_id: str) -> list[bytes]:
    """Well-formed stop commands that lie: refused only by a bus with a secret."""
    channel = keys.command_channel("inst-a")
    body = compact({"op": "stop", "task_id": task_id})
    now = time.time()
    stamp = f"{now:.3f}"
    return [
        body.encode(),
        signed_command("a-guess", channel, body, stamp).encode(),
        signed_command(SECRET, channel, body, f"{now - 3600:.3f}").encode(),
        signed_command(SECRET, keys.command_channel("inst-b"), body, stamp).encode(),
        signed_command(SECRET, keys.events, body, stamp).encode(),
    ]


@pytest.mark.parametrize("secret", [None, SECRET], ids=["unsigned", "signed"])
async def test_a_flood_of_garbage_changes_nothing(
    secret: str | None,
    start_manager: ManagerFactory,
    keys: Keys,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Stop requests are re-read only every 5 s: a stop confirmed at once came over the bus.
    slow = {"heartbeat_interval": 5.0, "liveness_ttl": 15.0, "stop_timeout": 4.0}
    a = await start_manager("inst-a", secret=secret, **slow)
    b = await start_manager("inst-b", secret=secret, **slow)
    started = asyncio.Event()
    target = await a.create_task(forever(started))
    await started.wait()
    rng = random.Random(20240601)
    events = garbage_events(target, rng)
    commands = garbage_commands(target, rng)  # to both instances
    to_a = forged_commands(keys, target) if secret is not None else []  # to the owner
    if secret is not None:
        events += forged_events(keys, target)
    # Every listener refuses every message, but each drops what poses as itself unread.
    expected = 2 * len(commands) + len(to_a)
    expected += sum(2 - p.startswith(b"inst-a\n") - p.startswith(b"inst-b\n") for p in events)
    with no_unawaited_coroutines(), caplog.at_level(logging.WARNING, logger=BUS_LOGGER):
        async with (
            a.events(kinds=["finished"]) as on_a,
            b.events(kinds=["finished"]) as on_b,
        ):
            for payload in events:
                assert await redis_client.publish(keys.events, payload) == 2
            for payload in commands:
                for instance in ("inst-a", "inst-b"):
                    channel = keys.command_channel(instance)
                    assert await redis_client.publish(channel, payload) == 1
            for payload in to_a:
                assert await redis_client.publish(keys.command_channel("inst-a"), payload) == 1
            assert a.running_count == 1

            # Afterwards, a real stop from B is delivered to A and confirmed, and
            # real events reach the streams on both sides.
            result = await b.stop_task(target)
            assert result.outcome is StopOutcome.CANCELLED, result
            other = await b.create_task(quick())
            on_a_seen = await collect_until(on_a, target, other)
            on_b_seen = await collect_until(on_b, target, other)
    # Forged events say the target completed: the first word on it is the real one.
    expected_seen = sorted([(target, TaskStatus.CANCELLED), (other, TaskStatus.COMPLETED)])
    assert sorted((e.task_id, e.status) for e in on_a_seen) == expected_seen
    assert sorted((e.task_id, e.status) for e in on_b_seen) == expected_seen
    record = await b.get_record(target)
    assert record is not None and record.stop_requested_at is not None
    assert_quietly_ignored(caplog, expected)


async def test_without_a_secret_a_forged_event_still_answers_no_stop(
    start_manager: ManagerFactory, keys: Keys, redis_client: redis.asyncio.Redis
) -> None:
    """Unsigned events are accepted without a secret, so a forged `finished` event
    does wake B's stop: the answer still comes from the record as the store holds
    it, which says the task runs on."""
    a = await start_manager("open-a", stop_timeout=2.0)
    b = await start_manager("open-b", stop_timeout=2.0)
    started, refused, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    task_id = await a.create_task(obstinate(started, refused, release))
    await started.wait()
    try:
        stopper = asyncio.create_task(b.stop_task(task_id))
        await refused.wait()  # B listens for the task's finish from before its command
        body = compact([finished_event(task_id)])
        for _ in range(3):  # woken again and again: each wake-up costs a read, no more
            await redis_client.publish(keys.events, f"mallory\n{body}")
            await asyncio.sleep(0.05)
        result = await stopper
        assert result.outcome is StopOutcome.PENDING, result
        assert result.status is TaskStatus.RUNNING
    finally:
        release.set()
    assert (await b.wait(task_id, timeout=STREAM_WAIT)).status is TaskStatus.COMPLETED
