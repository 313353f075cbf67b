"""Stopping tasks across OS processes: confirmed stops, lost wake-ups, bus hygiene, signatures.

Every instance here is a real `TaskManager`: workers in their own processes
(`tests/instance_worker.py`) and the test process itself, sharing one real server.
Rule 1 of the design is under test: the durable stop request is the truth and
pub/sub only a wake-up, so a lost, malformed or forged message can delay a stop
or be refused, but never lose a stop nor stop what nobody asked to stop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio

from distributed_helpers import ManagerFactory, WorkerPool, eventually
from taskward import StopOutcome, TaskStatus, TaskTimeout

if TYPE_CHECKING:
    from servers import ServerProcess
    from taskward.stores.keys import Keys

pytestmark = pytest.mark.redis

LONG = 60.0  # seconds a "long" task sleeps: it only ends when stopped


def sign(secret: str, channel: str, body: str, stamp: str) -> str:
    """A command signed as `taskward.bus._redis_codec` documents it (computed independently)."""
    mac = hmac.new(secret.encode(), f"{channel}\n{stamp}\n{body}".encode(), hashlib.sha256)
    return f"v1 {stamp} {mac.hexdigest()}\n{body}"


def stop_body(task_id: str) -> str:
    return json.dumps({"op": "stop", "task_id": task_id}, separators=(",", ":"))


# -- confirmed stops ------------------------------------------------------------------


async def test_stop_from_another_process_is_confirmed(
    pool: WorkerPool, start_manager: ManagerFactory
) -> None:
    # The owner re-reads stop requests only every 5 s: a stop confirmed well within a
    # second was delivered by pub/sub and confirmed by the owner's event.
    owner = await pool.launch("worker-a", heartbeat=5.0, liveness_ttl=15.0)
    other = await pool.launch("worker-b")
    here = await start_manager("observer")
    t1 = await owner.create("sleep", seconds=LONG, user_id="u1", item_id="chat-1")
    t2 = await owner.create("sleep", seconds=LONG, user_id="u1")
    t3 = await owner.create("sleep", seconds=LONG, user_id="u1")

    start = time.monotonic()
    result = await here.stop_task(t1)
    elapsed = time.monotonic() - start
    assert result.outcome is StopOutcome.CANCELLED, result
    assert result.status is TaskStatus.CANCELLED
    assert elapsed < 1.0, f"stop took {elapsed:.2f}s: not woken by the bus"
    rec = await here.get_record(t1)
    assert rec is not None
    assert rec.status is TaskStatus.CANCELLED
    assert rec.error is not None and rec.error.type == "CancelledError"
    assert rec.stop_requested_at is not None
    assert rec.instance_id == "worker-a"

    start = time.monotonic()
    answer = await other.stop(t2)
    elapsed = time.monotonic() - start
    assert answer == {"task_id": t2, "outcome": "cancelled", "status": "cancelled"}
    assert elapsed < 1.0, f"stop took {elapsed:.2f}s: not woken by the bus"
    seen = await other.get(t2)
    assert seen is not None and seen["status"] == "cancelled"

    # Another user's task looks exactly like a missing one; nothing is stopped.
    assert (await here.stop_task(t3, user_id="u2")).outcome is StopOutcome.NOT_FOUND
    assert (await other.stop(t3, user_id="u2"))["outcome"] == "not_found"
    assert (await owner.get(t3) or {}).get("status") == "running"
    assert await owner.running_count() == 1

    again = await here.stop_task(t1)
    assert again.outcome is StopOutcome.ALREADY_FINISHED
    assert again.status is TaskStatus.CANCELLED
    assert (await other.stop("00000000-0000-4000-8000-000000000000"))["outcome"] == "not_found"


async def test_a_task_that_swallows_cancellation_is_reported_pending(
    pool: WorkerPool,
    start_manager: ManagerFactory,
    keys: Keys,
    redis_client: redis.asyncio.Redis,
) -> None:
    owner = await pool.launch("worker-a")  # reconciles stop requests every 0.2 s
    here = await start_manager("observer", stop_timeout=1.0)
    task_id = await owner.create("swallow-cancel", seconds=3.0)

    start = time.monotonic()
    result = await here.stop_task(task_id)
    elapsed = time.monotonic() - start
    assert result.outcome is StopOutcome.PENDING, result
    assert result.status is TaskStatus.RUNNING
    assert 0.9 <= elapsed < 2.0, elapsed

    # The request stays in the store, on the record and in the owner's stop set.
    rec = await here.get_record(task_id)
    assert rec is not None
    assert rec.status is TaskStatus.RUNNING
    assert rec.stop_requested_at is not None
    assert await redis_client.sismember(keys.instance_stops("worker-a"), task_id)

    # The owner keeps honouring it (re-cancelling on its timer); the task refuses every
    # time and finally returns: it is reported as completed, never as cancelled.
    final = await here.wait(task_id, timeout=10.0)
    assert final.status is TaskStatus.COMPLETED
    assert final.result["swallowed"] >= 3, final.result
    assert final.stop_requested_at == rec.stop_requested_at
    assert not await redis_client.sismember(keys.instance_stops("worker-a"), task_id)
    late = await here.stop_task(task_id)
    assert late.outcome is StopOutcome.ALREADY_FINISHED
    assert late.status is TaskStatus.COMPLETED


async def test_a_pending_stop_on_the_owner_itself_is_durable_too(
    pool: WorkerPool, start_manager: ManagerFactory
) -> None:
    """Stopping on the owner instance must leave the same durable trace as a remote stop."""
    owner = await pool.launch("worker-a", stop_timeout=1.0)
    here = await start_manager("observer")
    task_id = await owner.create("swallow-cancel", seconds=3.0)

    answer = await owner.stop(task_id)
    assert answer["outcome"] == "pending", answer

    rec = await here.get_record(task_id)
    assert rec is not None and rec.status is TaskStatus.RUNNING
    assert rec.stop_requested_at is not None, (
        "a pending stop issued on the owner left no stop request in the store"
    )


async def test_a_confirmed_stop_is_visible_to_every_instance_on_return(
    pool: WorkerPool,
    start_manager: ManagerFactory,
    keys: Keys,
    redis_client: redis.asyncio.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Like a creation, a stop answered `cancelled` is what every instance reads next.

    The owner (here) reaches Redis over a slow link, 50 ms a command, as a remote
    server would be: whatever it answers must already be in the store.
    """
    other = await pool.launch("worker-b")
    here = await start_manager("observer")
    client: Any = here._store.client  # type: ignore[attr-defined]
    send = client.execute_command

    async def slow_link(*args: Any, **options: Any) -> Any:
        await asyncio.sleep(0.05)
        return await send(*args, **options)

    monkeypatch.setattr(client, "execute_command", slow_link)
    stale: list[str] = []
    for i in range(3):
        task_id = await here.create_task(asyncio.sleep(LONG))
        created = await redis_client.hget(keys.task(task_id), "s")
        assert created == b"running", "a creation is visible everywhere on return"
        assert (await here.stop_task(task_id)).outcome is StopOutcome.CANCELLED
        status = await redis_client.hget(keys.task(task_id), "s")
        if status != b"cancelled":
            stale.append(f"#{i} stopped by its owner: store says {status!r}")
        task_id = await here.create_task(asyncio.sleep(LONG))
        answer = await other.stop(task_id)
        assert answer["outcome"] == "cancelled", answer
        status = await redis_client.hget(keys.task(task_id), "s")
        if status != b"cancelled":
            stale.append(f"#{i} stopped from worker-b: store says {status!r}")
    assert not stale, f"read right after a confirmed stop: {stale}"


# -- lost wake-ups ----------------------------------------------------------------------


async def test_a_stop_survives_a_killed_pubsub_connection(
    private_redis: ServerProcess, key_prefix: str
) -> None:
    # A private server: CLIENT KILL TYPE pubsub must not disturb anyone else's listeners.
    heartbeat = 1.0  # the owner's reconcile interval
    async with (
        WorkerPool(private_redis.url, key_prefix) as pool,
        ManagerFactory(private_redis.url, key_prefix) as start_manager,
    ):
        owner = await pool.launch("worker-a", heartbeat=heartbeat, liveness_ttl=3.0)
        here = await start_manager("observer")
        task_id = await owner.create("sleep", seconds=LONG)

        client = redis.asyncio.Redis.from_url(private_redis.url)
        try:
            killed = await client.client_kill_filter(_type="pubsub")
        finally:
            await client.aclose()
        assert killed >= 2  # the owner's listener and ours

        start = time.monotonic()
        result = await here.stop_task(task_id)
        elapsed = time.monotonic() - start
        assert result.outcome is StopOutcome.CANCELLED, (result, pool.logs())
        assert elapsed < heartbeat + 1.5, f"stop took {elapsed:.2f}s"
        rec = await here.get_record(task_id)
        assert rec is not None and rec.status is TaskStatus.CANCELLED

        # Both listeners are back: a second stop is woken by pub/sub again.
        second = await owner.create("sleep", seconds=LONG)
        result = await here.stop_task(second)
        assert result.outcome is StopOutcome.CANCELLED


async def test_a_dropped_stop_command_is_honoured_from_the_store(
    pool: WorkerPool, start_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    heartbeat = 1.0
    owner = await pool.launch("worker-a", heartbeat=heartbeat, liveness_ttl=3.0)
    here = await start_manager("observer")
    task_id = await owner.create("sleep", seconds=LONG)
    dropped: list[tuple[str, dict[str, Any]]] = []

    async def lose(instance_id: str, command: dict[str, Any]) -> None:
        dropped.append((instance_id, command))  # the wake-up never reaches the owner

    monkeypatch.setattr(here._bus, "send_command", lose)
    start = time.monotonic()
    result = await here.stop_task(task_id)
    elapsed = time.monotonic() - start
    assert dropped == [("worker-a", {"op": "stop", "task_id": task_id})]
    assert result.outcome is StopOutcome.CANCELLED, result
    assert elapsed < heartbeat + 1.0, f"stop took {elapsed:.2f}s"


# -- malformed and foreign messages ----------------------------------------------------------


def garbage_commands() -> list[bytes]:
    return [
        b"",
        b"not json",
        b"\xff\xfe\x00\x80 not utf-8",
        b"[1, 2, 3]",
        b'"a string"',
        b"null",
        b'{"op": "explode", "task_id": "x"}',
        b'{"op": 5}',
        b'{"op": "stop"}',
        b'{"op": "stop", "task_id": null}',
        b'{"op": "stop", "task_id": {"nested": [1]}}',
        b'{"op": "stop", "task_id": "00000000-0000-4000-8000-000000000000"}',
        b"v1 not-a-signature",
        b"v1 1 2 3\n{}",
        b"v1 1.0 abc\n" + b'{"op": "stop"}',
        b"x" * 1_000_000,
    ]


def garbage_events(running: list[str]) -> list[bytes]:
    now = time.time()
    forged = [
        # Well-formed, but lies: "finished" events for tasks that are still running.
        json.dumps(
            [
                [
                    "finished",
                    t,
                    "completed",
                    now,
                    None,
                    None,
                    {"task_id": t, "status": "completed", "result": "forged"},
                    None,
                    None,
                ]
                for t in running
            ]
        ).encode(),
    ]
    bodies = [
        b"not json",
        b"{}",
        b"[1]",
        b"[[1, 2, 3]]",
        b'[["finished", "t", "bogus", 1, null, null, null, null, null]]',
        b'[["finished", "t", "completed", "yesterday", null, null, null, null, null]]',
        b'[["finished", "t", "completed", 1, null, null, [1], null, null]]',
        b'[["finished", "t", "completed", 1, null, null, {"status": "completed"}, null, null]]',
        b'[["finished", "t", "completed", 1, null, null, {"task_id": "t", "error": 5}, null, 1]]',
        b'[["output", "t", "running", 1, null, null, null, 5, "seq"]]',
        b"\xff\xfe garbage",
        *forged,
    ]
    return [
        b"",
        b"no sender line",
        b"\n[]",
        *(b"foreign-instance\n" + body for body in bodies),
        b"foreign-instance\n" + b"[" * 100_000,
    ]


async def test_malformed_and_foreign_messages_are_skipped(
    pool: WorkerPool,
    start_manager: ManagerFactory,
    keys: Keys,
    redis_client: redis.asyncio.Redis,
) -> None:
    # Long heartbeats: only the bus can make the final stops fast.
    a = await pool.launch("worker-a", heartbeat=5.0, liveness_ttl=15.0)
    b = await pool.launch("worker-b", heartbeat=5.0, liveness_ttl=15.0)
    here = await start_manager("observer", heartbeat_interval=5.0, liveness_ttl=15.0)
    on_a = await a.create("sleep", seconds=LONG)
    on_b = await b.create("sleep", seconds=LONG)
    # Listeners that decode events: a waiter here (for on_a) and one on worker A (for on_b).
    wait_here = asyncio.create_task(here.wait(on_a, timeout=30.0))
    wait_on_a = asyncio.create_task(a.wait(on_b, timeout=30.0))
    try:
        await asyncio.sleep(0.3)  # both waiters registered
        for payload in garbage_commands():
            for instance in ("worker-a", "worker-b", "observer"):
                receivers = await redis_client.publish(keys.command_channel(instance), payload)
                assert receivers == 1
        for payload in garbage_events([on_a, on_b]):
            assert await redis_client.publish(keys.events, payload) >= 3
        await asyncio.sleep(0.5)

        # Nothing was stopped or finished by any of it; forged events woke nobody for good.
        assert not wait_here.done()
        assert not wait_on_a.done()
        assert (await a.get(on_a) or {}).get("status") == "running"
        assert (await b.get(on_b) or {}).get("status") == "running"
        assert a.alive and b.alive
        assert "ignoring a message" in a.stderr_text

        # Every listener still works: both stops are fast (bus), both waiters wake.
        start = time.monotonic()
        first = await here.stop_task(on_a)
        second = await a.stop(on_b)
        elapsed = time.monotonic() - start
        assert first.outcome is StopOutcome.CANCELLED
        assert second["outcome"] == "cancelled"
        assert elapsed < 2.0, f"stops took {elapsed:.2f}s: a listener is stuck"
        assert (await asyncio.wait_for(wait_here, 2.0)).status is TaskStatus.CANCELLED
        assert (await asyncio.wait_for(wait_on_a, 2.0))["status"] == "cancelled"
    finally:
        for waiter in (wait_here, wait_on_a):
            waiter.cancel()
        await asyncio.gather(wait_here, wait_on_a, return_exceptions=True)


async def test_a_forged_finished_event_does_not_end_a_wait(
    pool: WorkerPool,
    start_manager: ManagerFactory,
    keys: Keys,
    redis_client: redis.asyncio.Redis,
) -> None:
    owner = await pool.launch("worker-a")
    here = await start_manager("observer")
    task_id = await owner.create("sleep", seconds=LONG)
    forged = [
        "finished",
        task_id,
        "completed",
        time.time(),
        None,
        None,
        {"task_id": task_id, "status": "completed", "result": "forged"},
        None,
        None,
    ]

    async def forge() -> None:
        await asyncio.sleep(0.2)
        await redis_client.publish(keys.events, "foreign\n" + json.dumps([forged]))

    forger = asyncio.create_task(forge())
    with pytest.raises(TaskTimeout):
        await here.wait(task_id, timeout=1.0)
    await forger
    rec = await here.get_record(task_id)
    assert rec is not None and rec.status is TaskStatus.RUNNING


# -- signed commands ------------------------------------------------------------------------


async def test_with_a_shared_secret_only_signed_commands_stop(
    pool: WorkerPool,
    start_manager: ManagerFactory,
    keys: Keys,
    redis_client: redis.asyncio.Redis,
) -> None:
    secret = "s3cret-shared-by-the-fleet"
    owner = await pool.launch("worker-a", secret=secret)  # reconciles every 0.2 s
    here = await start_manager("observer", secret=secret)

    first = await owner.create("sleep", seconds=LONG)
    result = await here.stop_task(first)
    assert result.outcome is StopOutcome.CANCELLED

    target = await owner.create("sleep", seconds=LONG)
    channel = keys.command_channel("worker-a")
    body = stop_body(target)
    now = time.time()
    stamp = f"{now:.3f}"
    forgeries = [
        body,  # unsigned
        sign("a-guessed-secret", channel, body, stamp),  # wrong secret
        sign(secret, keys.command_channel("worker-b"), body, stamp),  # meant for another
        sign(secret, channel, body, f"{now - 3600:.3f}"),  # replayed an hour later
        sign(secret, channel, stop_body("another-task"), stamp).replace(
            stop_body("another-task"), body
        ),  # tampered body
        f"v1 {stamp} {'0' * 64}\n{body}",
    ]
    for payload in forgeries:
        assert await redis_client.publish(channel, payload) == 1
    await asyncio.sleep(1.0)  # five reconcile rounds: no durable request, nothing stops

    rec = await here.get_record(target)
    assert rec is not None
    assert rec.status is TaskStatus.RUNNING
    assert rec.stop_requested_at is None
    assert (await owner.get(target) or {}).get("status") == "running"
    log = owner.stderr_text
    assert "unsigned command" in log
    assert "bad signature" in log
    assert "stale command" in log

    # Control: the same command, signed properly by hand, does stop it (over the bus alone).
    assert await redis_client.publish(channel, sign(secret, channel, body, f"{time.time():.3f}"))
    final = await here.wait(target, timeout=2.0)
    assert final.status is TaskStatus.CANCELLED


async def test_a_stop_from_an_instance_with_the_wrong_secret_still_lands(
    pool: WorkerPool, start_manager: ManagerFactory
) -> None:
    """Its command is refused, but its durable request is honoured on the owner's timer."""
    owner = await pool.launch("worker-a", secret="right", heartbeat=0.5, liveness_ttl=2.0)
    misconfigured = await start_manager("observer", secret="wrong")
    task_id = await owner.create("sleep", seconds=LONG)

    result = await misconfigured.stop_task(task_id)
    assert result.outcome is StopOutcome.CANCELLED, result
    assert "bad signature" in owner.stderr_text


async def test_stops_of_many_tasks_across_instances_all_land(
    pool: WorkerPool, start_manager: ManagerFactory
) -> None:
    a, b = await pool.launch_many("worker-a", "worker-b")
    here = await start_manager("observer")
    on_a = [await a.create("sleep", seconds=LONG, item_id="chat-9") for _ in range(20)]
    on_b = [await b.create("sleep", seconds=LONG, item_id="chat-9") for _ in range(20)]

    results = await here.stop_item_tasks("chat-9")
    assert sorted(r.task_id for r in results) == sorted(on_a + on_b)
    assert {r.outcome for r in results} == {StopOutcome.CANCELLED}
    assert await here.list_task_ids_by_item_id("chat-9") == []
    counts, _ = await eventually(
        lambda: asyncio.gather(a.running_count(), b.running_count()),
        timeout=2.0,
        what="both workers idle",
        accept=lambda c: list(c) == [0, 0],
    )
    assert list(counts) == [0, 0]
