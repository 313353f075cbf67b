"""Tool calls across instances: a slow tool started on A is polled and stopped from B."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import pytest

from taskward import Caller, TaskManager, TaskStatus
from taskward.tools import ToolContext, ToolRegistry

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.redis

ANA = Caller("ana")


async def crawl(pages: int, ctx: ToolContext) -> str:
    """Crawl some pages, slowly."""
    for page in range(pages):
        ctx.progress(page / pages, f"page {page}")
        await asyncio.sleep(0.05)
    return "crawled"


async def test_a_call_on_one_instance_is_polled_and_stopped_from_another(
    make_manager: Callable[..., TaskManager], redis_url: str, key_prefix: str
) -> None:
    options: dict[str, Any] = {"redis": redis_url, "prefix": key_prefix, "stop_timeout": 3.0}
    a, b = make_manager(**options, timeout=0.2), make_manager(**options)
    on_a, on_b = ToolRegistry(), ToolRegistry()
    on_a.add(crawl)  # only A runs the tool; B needs nothing but the task tools
    started = json.loads(await on_a.call("crawl", {"pages": 1000}, ToolContext(a, ANA)))
    assert started["status"] == "running"
    task_id = started["task_id"]

    from_b = ToolContext(b, ANA)
    seen = json.loads(await on_b.call("check_task", {"task_id": task_id}, from_b))
    assert seen["status"] == "running" and seen["tool"] == "crawl"
    assert seen["poll_after_s"] >= 1
    await asyncio.sleep(0.3)  # a flush of A's progress
    later = json.loads(await on_b.call("check_task", {"task_id": task_id, "wait": 0.1}, from_b))
    assert later["progress"] > 0 and later["progress_message"].startswith("page ")
    listed = json.loads(await on_b.call("list_tasks", {"status": "running"}, from_b))
    assert [t["task_id"] for t in listed["tasks"]] == [task_id]

    # Another user on B sees nothing, and cannot stop it.
    bo = ToolContext(b, Caller("bo"))
    assert json.loads(await on_b.call("check_task", {"task_id": task_id}, bo))["status"] == (
        "not_found"
    )
    assert json.loads(await on_b.call("stop_task", {"task_id": task_id}, bo))["outcome"] == (
        "not_found"
    )

    stopped = json.loads(await on_b.call("stop_task", {"task_id": task_id}, from_b))
    assert (stopped["outcome"], stopped["status"]) == ("cancelled", "cancelled")
    rec = await a.get_record(task_id, caller=ANA)
    assert rec is not None and rec.status is TaskStatus.CANCELLED
    final = json.loads(await on_b.call("check_task", {"task_id": task_id}, from_b))
    assert final["status"] == "cancelled" and "poll_after_s" not in final
