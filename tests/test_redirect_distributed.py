"""Redirects across instances on a real server: set on one, run on another, delivered once;
a delivering instance killed (-9) mid-retry, and another one delivering exactly once."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from receivers import Answer, Receiver
from taskward import Caller
from taskward.redirect.signing import generate_secret, verify
from taskward.redirect.webhook import WebhookAdapter

if TYPE_CHECKING:
    from collections.abc import Iterator

    from distributed_helpers import ManagerFactory, WorkerPool
    from taskward import TaskManager

pytestmark = pytest.mark.redis

ANA = Caller("ana")
SECRET = generate_secret()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.close()


async def state_of(tm: TaskManager, task_id: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        rec = await tm.get_record(task_id, caller=ANA)
        assert rec is not None
        if rec.redirect is not None and rec.redirect["state"] in ("delivered", "failed"):
            return rec.redirect
        assert time.monotonic() < deadline, f"not settled: {rec.redirect}"
        await asyncio.sleep(0.05)


async def finish_after(seconds: float, value: Any) -> Any:
    await asyncio.sleep(seconds)
    return value


async def test_a_redirect_set_on_one_instance_is_delivered_for_another_ones_task(
    start_manager: ManagerFactory, receiver: Receiver
) -> None:
    owner = await start_manager(
        "owner", redirect_adapters={"webhook": WebhookAdapter(receiver.url, SECRET)}
    )
    other = await start_manager(
        "other", redirect_adapters={"webhook": WebhookAdapter(receiver.url, SECRET)}
    )
    task_id = await owner.create_task(finish_after(0.5, "from the owner"), caller=ANA)
    assert await other.set_output_redirect(task_id, "room", "webhook", caller=ANA)
    await asyncio.sleep(0.1)  # the owner is told over the bus
    seen_by_owner = await owner.get_record(task_id, caller=ANA)
    assert seen_by_owner is not None and seen_by_owner.redirect is not None
    assert seen_by_owner.redirect["channel_id"] == "room"
    assert not await other.set_output_redirect(task_id, "room", "webhook", caller=Caller("bo"))
    state = await state_of(other, task_id)
    assert state["state"] == "delivered"
    assert (await state_of(owner, task_id)) == state  # the same record on both
    [got] = receiver.requests
    assert verify(SECRET, got.headers, got.body) == state["delivery_id"]
    assert got.json()["data"]["text"] == "from the owner"
    assert await owner.pending_deliveries() == 0


async def test_redirects_racing_their_tasks_end_are_each_delivered_once(
    start_manager: ManagerFactory, receiver: Receiver
) -> None:
    """Set while running, at the moment of the end, or after it: one delivery each."""
    adapters = {"webhook": WebhookAdapter(receiver.url + "/{channel_id}")}
    owner = await start_manager("owner", redirect_adapters=adapters)
    other = await start_manager(
        "other", redirect_adapters={"webhook": WebhookAdapter(receiver.url + "/{channel_id}")}
    )
    rng = random.Random(7)
    ids = [
        await owner.create_task(finish_after(rng.uniform(0, 0.05), i), caller=ANA)
        for i in range(60)
    ]

    async def redirect(task_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        assert await other.set_output_redirect(task_id, task_id, "webhook", caller=ANA)

    await asyncio.gather(*(redirect(t, rng.uniform(0, 0.08)) for t in ids))
    for task_id in ids:
        assert (await state_of(other, task_id))["state"] == "delivered"
    paths = Counter(r.path for r in receiver.requests)
    assert paths == Counter(f"/{t}" for t in ids)  # every task once, none twice
    assert await other.pending_deliveries() == 0


@pytest.mark.slow
async def test_a_delivering_instance_killed_mid_retry_is_taken_over_exactly_once(
    pool: WorkerPool,
    start_manager: ManagerFactory,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKWARD_WEBHOOK_URL", receiver.url + "/hook")
    monkeypatch.setenv("TASKWARD_WEBHOOK_SECRET", SECRET)
    receiver.default = Answer(503, "down", delay=0.3)  # every attempt fails, slowly
    doomed = await pool.launch("doomed", delivery_attempt_timeout=1.0)
    task_id = await doomed.create("sleep", seconds=0.1, result="survives", user_id="ana")
    assert await doomed.redirect(task_id, "room", "webhook", user_id="ana")
    deadline = time.monotonic() + 20
    # Kill it while an attempt is under way (its second or later: mid-retry).
    while not (len(receiver.requests) >= 2 and time.time() - receiver.requests[-1].at < 0.15):
        assert time.monotonic() < deadline, pool.logs()
        await asyncio.sleep(0.01)
    await doomed.kill()
    tried = len(receiver.requests)
    receiver.default = Answer(200, "ok")
    taker = await start_manager("taker", delivery_attempt_timeout=1.0)
    state = await state_of(taker, task_id)
    assert state["state"] == "delivered"
    assert state["attempts"] == tried + 1
    assert receiver.statuses.count(200) == 1  # delivered exactly once
    assert receiver.statuses[:tried] == [503] * tried
    assert receiver.unique_ids() == {state["delivery_id"]}  # one id on every attempt
    for got in receiver.requests:
        verify(SECRET, got.headers, got.body)
    await asyncio.sleep(1.0)  # nothing more arrives
    assert len(receiver.requests) == tried + 1
    assert await taker.pending_deliveries() == 0
