"""Time from the crash of an instance to its running tasks being `lost`, seen from another.

Each round starts an instance (this script with ``--worker``, a subprocess)
with `--tasks` tasks that wait forever, waits until another instance (this
process) sees them running, kills it with SIGKILL and polls the records every
`--poll` seconds until every task reads `lost`. Both instances use the
defaults (heartbeat_interval=1.0, liveness_ttl=3.0): the figure is bounded by
about liveness_ttl + heartbeat_interval (the dead key expires, then the next
reaper pass marks its tasks). The watching instance has been up longer than
liveness_ttl before the first kill, as a long-running peer would be (a
freshly started instance waits that long before it reaps).

The prior systems' figures are quoted, not measured (nobody waits minutes here):
open-webui 0.12.4 keeps a per-task key with a 300 s TTL refreshed every 75 s
(its REDIS_TASK_TTL default); RQ's worker TTL is 420 s; SAQ sweeps every 60 s;
arq can leave a job in progress for hours.

    python bench/liveness.py [--rounds 5] [--quick] [--redis URL | --start-server]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import time

from _common import add_redis_arguments, delete_prefix, new_prefix, redis_server
from taskward import TaskManager, TaskStatus

#: open-webui 0.12.4: a per-task key with a 300 s TTL, refreshed every 75 s.
OPENWEBUI_SECONDS = 300.0
PRIOR = (
    "open-webui 0.12.4 300 s (per-task key, 300 s TTL refreshed every 75 s), "
    "RQ 420 s, SAQ 60 s sweep, arq hours"
)


async def forever() -> None:
    await asyncio.Event().wait()


async def worker(url: str, prefix: str, tasks: int) -> None:
    """The instance that will crash: start the tasks, print their ids, run until killed."""
    async with TaskManager(redis=url, prefix=prefix, instance_id=f"doomed-{os.getpid()}") as tm:
        ids = await asyncio.gather(*(tm.create_task(forever(), name="wait") for _ in range(tasks)))
        print(json.dumps(ids), flush=True)
        await asyncio.Event().wait()


async def statuses(tm: TaskManager, ids: list[str]) -> list[TaskStatus | None]:
    records = await asyncio.gather(*(tm.get_record(t) for t in ids))
    return [None if r is None else r.status for r in records]


async def one_round(url: str, prefix: str, watcher: TaskManager, args: argparse.Namespace) -> float:
    """Seconds from SIGKILL to every task of the killed instance read as lost."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, __file__, "--worker", "--redis", url, "--prefix", prefix),
        *("--tasks", str(args.tasks)),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None  # a PIPE
        line = await proc.stdout.readline()
        if not line:
            code = await proc.wait()
            raise SystemExit(f"the worker process exited ({code}) before starting its tasks")
        ids: list[str] = json.loads(line)
        seen = await statuses(watcher, ids)
        if any(s is not TaskStatus.RUNNING for s in seen):
            raise SystemExit(f"PROBLEM: the tasks are not all running before the kill: {seen}")
        # A random moment in the worker's heartbeat cycle.
        await asyncio.sleep(random.uniform(0.1, 0.1 + args.heartbeat_phase))
        killed_at = time.perf_counter()
        proc.kill()
        await proc.wait()
        deadline = killed_at + args.give_up
        while True:
            seen = await statuses(watcher, ids)
            now = time.perf_counter()
            if all(s is TaskStatus.LOST for s in seen):
                return now - killed_at
            if any(s not in (TaskStatus.RUNNING, TaskStatus.LOST) for s in seen):
                raise SystemExit(f"PROBLEM: killed tasks read as {set(seen)}, expected lost")
            if now > deadline:
                raise SystemExit(
                    f"PROBLEM: {sum(s is TaskStatus.LOST for s in seen)} of {len(ids)} tasks "
                    f"lost after {args.give_up:g} s"
                )
            await asyncio.sleep(args.poll)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def measure(url: str, args: argparse.Namespace) -> None:
    prefix = new_prefix("liveness")
    try:
        async with TaskManager(redis=url, prefix=prefix, instance_id="watcher") as watcher:
            up_since = time.monotonic()
            ready = up_since + watcher.liveness_ttl + 0.2
            times: list[float] = []
            for _ in range(args.rounds):
                await asyncio.sleep(max(0.0, ready - time.monotonic()))
                times.append(await one_round(url, prefix, watcher, args))
            bound = watcher.liveness_ttl + watcher.heartbeat_interval
    finally:
        delete_prefix(url, prefix)
    worst = max(times)
    print(
        f"kill -9 of an instance with {args.tasks} running tasks -> all read as lost by another "
        f"instance (heartbeat_interval={watcher.heartbeat_interval:g}s, "
        f"liveness_ttl={watcher.liveness_ttl:g}s; expected at most ~{bound:g}s)"
    )
    print(f"{'prior systems (quoted)':<28} {PRIOR}")
    print(
        f"{'taskward':<28} {', '.join(f'{t:.2f}' for t in times)} s   max {worst:.2f} s   "
        f"{worst / bound:.2f}x of this run's bound of {bound:g} s; "
        f"{OPENWEBUI_SECONDS / worst:.0f}x sooner than open-webui's 300 s (quoted)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_redis_arguments(parser)
    parser.add_argument("--rounds", type=int, default=5, help="instances killed, one by one")
    parser.add_argument("--tasks", type=int, default=20, help="running tasks per instance")
    parser.add_argument("--poll", type=float, default=0.01, help="seconds between reads")
    parser.add_argument(
        "--heartbeat-phase",
        type=float,
        default=1.0,
        help="the kill comes 0.1 s plus up to this many seconds after the tasks are seen",
    )
    parser.add_argument("--give-up", type=float, default=20.0, help="seconds before failing")
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.worker:
        asyncio.run(worker(parsed.redis, parsed.prefix, parsed.tasks))
        sys.exit(0)
    if parsed.quick:
        parsed.rounds = 1
    # The reaper's warnings about the lost tasks are this benchmark's expected outcome.
    logging.getLogger("taskward").setLevel(logging.ERROR)

    async def main() -> None:
        with redis_server(parsed) as url:
            await measure(url, parsed)

    asyncio.run(main())
