"""After an outage, an instance cancels the tasks others marked lost meanwhile, and
only those: a task that ended here normally while it asked is left alone and is
not logged about."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from helpers import blocked
from taskward import TaskError, TaskManager, TaskStatus
from taskward._live import finished
from taskward.stores.base import InProcessStore, WriteBatch

if TYPE_CHECKING:
    import pytest


async def test_only_tasks_marked_elsewhere_are_cancelled_and_logged(
    tm: TaskManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "taskward")
    release = asyncio.Event()
    ends_here = await tm.create_task(blocked(release, "done here"))
    reaped = await tm.create_task(blocked(asyncio.Event()))
    await asyncio.sleep(0.05)  # both written as running
    store = tm._store
    assert isinstance(store, InProcessStore)
    # Another instance's reaper marked both lost while this one was away...
    rows = [tm._table.rows[ends_here], tm._table.rows[reaped]]
    lost = TaskError("TaskLost", "lost with its instance")
    store.save_now(
        WriteBatch([finished(row, "lost", None, lost, time.time()) for row in rows], {}, 0.0)
    )
    # ...and one of them ends here normally before the instance settles.
    release.set()
    await asyncio.sleep(0.05)
    await tm._keeper._settle_reaped(rows)
    assert "marked lost elsewhere" in caplog.text
    assert reaped in caplog.text
    assert ends_here not in caplog.text  # it ended here: nothing untrue is said of it
    assert (await tm.wait(reaped, timeout=1)).status is TaskStatus.LOST
    assert tm.running_count == 0
