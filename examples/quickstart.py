"""taskward in one screen: tasks running, backgrounded, reported and stopped.

    make example        (or: python examples/quickstart.py)

Runs on the in-process default; pass a Redis URL to share tasks between
processes:  python examples/quickstart.py redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import asyncio
import json
import sys

import taskward
from taskward import TaskManager


async def quick_lookup(city: str) -> dict[str, object]:
    await asyncio.sleep(0.05)
    return {"city": city, "temperature_c": 21}


async def slow_report(pages: int) -> str:
    for page in range(1, pages + 1):
        await asyncio.sleep(0.1)
        taskward.report_progress(page / pages, f"page {page} of {pages}")
        taskward.emit(f"wrote page {page}")
    return f"report of {pages} pages"


async def endless_answer() -> None:
    while True:  # a chat answer being generated, until someone stops it
        await asyncio.sleep(0.05)
        taskward.emit("token")


async def main(redis_url: str | None) -> None:
    async with TaskManager(timeout=0.5, redis=redis_url, shutdown_grace=1.0) as tm:
        print("1. a tool call that beats its timeout returns inline:")
        print("  ", await tm.execute(quick_lookup("Lisbon"), "weather", user_id="ana"))

        print("2. a slow one keeps running and returns an envelope to poll:")
        envelope = await tm.execute(slow_report(8), "report", user_id="ana")
        print("  ", envelope)
        task_id = json.loads(envelope)["task_id"]
        await asyncio.sleep(0.3)
        print("   check_task while running:", await tm.get_result(task_id, user_id="ana"))
        print("   another user sees nothing:", await tm.get_result(task_id, user_id="bo"))
        print("   finally:", await tm.await_result(task_id, timeout=5, user_id="ana"))
        chunks = await tm.read_output(task_id)
        print("   its output stream:", [c.data for c in chunks])

        print("3. background work on a chat, stopped by item:")
        answer_id = await tm.create_task(endless_answer(), "chat-42", user_id="ana", name="answer")
        await asyncio.sleep(0.2)
        print("   running on chat-42:", await tm.list_task_ids_by_item_id("chat-42"))
        for result in await tm.stop_item_tasks("chat-42"):
            print("   stop:", result.to_json())
        print("   record:", await tm.get_result(answer_id))
        print("   stopping it again:", (await tm.stop_task(answer_id)).to_json())

        print("4. every task of ana, newest first:")
        print("  ", await tm.list_tasks(user_id="ana"))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
