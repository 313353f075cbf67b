"""Task lifecycles per second on Redis: taskward vs open-webui 0.12.4's own task code.

A lifecycle: create a task, run a trivial coroutine, and have its outcome in
Redis. Bursts of `--burst` concurrent creations (``asyncio.gather`` of the
creates), then every result awaited, repeated `--bursts` times; then the same
one task at a time (create, wait), the idle case.

- taskward: ``await tm.create_task(...)`` then ``await tm.wait(id)`` on one
  instance; the timed part ends once everything is written (``tm.records()``
  returns only after the flusher has written what is pending). A second
  `TaskManager` (same prefix, another instance id, alive throughout, so the
  first also publishes its events) then reads every record back: completed,
  with its result (timed separately, not part of the figure). No record may
  be left non-terminal.
- open-webui: its ``open_webui.tasks.create_task`` on its own Redis client, in
  the venv made by `bench/setup_openwebui.sh`, as a subprocess
  (`bench/openwebui_baseline.py`), on the same server in the same run. It keeps
  no results; a lifecycle ends when its cleanup is written.

Round trips are counted on the client, one per write to the socket (a pipeline
or a Lua call is one): taskward's `CountingConnection`, an equivalent class in
the baseline. Redis at 127.0.0.1:6379 unless `--redis URL` or `--start-server`.

    python bench/redis_lifecycle.py [--burst 400] [--bursts 50] [--sequential 2000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from _common import (
    REPO,
    add_redis_arguments,
    delete_keys,
    delete_prefix,
    fmt_ratio,
    new_prefix,
    redis_server,
)
from taskward import TaskManager, TaskStatus
from taskward._redis import CountingConnection, connect

BASELINE_PYTHON = REPO / ".bench-venv" / "openwebui" / "bin" / "python"
BASELINE_SCRIPT = REPO / "bench" / "openwebui_baseline.py"
VERIFY_CONCURRENCY = 64


async def trivial(i: int) -> int:
    return i


@dataclass(slots=True)
class Run:
    lifecycles: int = 0
    seconds: float = 0.0
    round_trips: int = 0
    verify_seconds: float = 0.0
    wrong: int = 0  # records read back that were not completed with the right result

    @property
    def per_second(self) -> float:
        return self.lifecycles / self.seconds

    @property
    def round_trips_per_lifecycle(self) -> float:
        return self.round_trips / self.lifecycles


async def verify(observer: TaskManager, ids: list[str], first: int) -> int:
    """Read every record from the second instance; how many are not as expected."""
    wrong = 0
    for start in range(0, len(ids), VERIFY_CONCURRENCY):
        chunk = ids[start : start + VERIFY_CONCURRENCY]
        records = await asyncio.gather(*(observer.get_record(t) for t in chunk))
        for offset, rec in enumerate(records):
            expected = first + start + offset
            if rec is None or rec.status is not TaskStatus.COMPLETED or rec.result != expected:
                wrong += 1
    return wrong


async def taskward_bursts(
    tm: TaskManager, observer: TaskManager, n: int, bursts: int, items: int, run: Run | None
) -> None:
    for _ in range(bursts):
        rt = CountingConnection.round_trips
        start = time.perf_counter()
        ids = await asyncio.gather(
            *(tm.create_task(trivial(i), f"chat{i % items}") for i in range(n))
        )
        records = await asyncio.gather(*(tm.wait(t) for t in ids))
        await tm.records(status=TaskStatus.RUNNING, limit=1)  # returns once all is written
        elapsed = time.perf_counter() - start
        round_trips = CountingConnection.round_trips - rt
        if [r.result for r in records] != list(range(n)):
            raise AssertionError("taskward returned wrong results")
        if run is None:
            continue
        run.lifecycles += n
        run.seconds += elapsed
        run.round_trips += round_trips
        start = time.perf_counter()
        run.wrong += await verify(observer, ids, 0)
        run.verify_seconds += time.perf_counter() - start


async def taskward_sequential(tm: TaskManager, observer: TaskManager, n: int) -> Run:
    run = Run(lifecycles=n)
    ids: list[str] = []
    rt = CountingConnection.round_trips
    start = time.perf_counter()
    for i in range(n):
        task_id = await tm.create_task(trivial(i), f"chat{i % 64}")
        if (await tm.wait(task_id)).result != i:
            raise AssertionError("taskward returned a wrong result")
        ids.append(task_id)
    await tm.records(status=TaskStatus.RUNNING, limit=1)
    run.seconds = time.perf_counter() - start
    run.round_trips = CountingConnection.round_trips - rt
    start = time.perf_counter()
    # Retention keeps the newest max_finished records: check those.
    keep = min(n, observer.retention.max_finished)
    run.wrong = await verify(observer, ids[-keep:], n - keep)
    run.verify_seconds = time.perf_counter() - start
    return run


async def run_taskward(
    url: str, args: argparse.Namespace
) -> tuple[Run, Run | None, int, dict[str, Any]]:
    prefix = new_prefix("lifecycle")
    conn = connect(url, connection_class=CountingConnection)
    tm = TaskManager(redis=conn.client, prefix=prefix, instance_id="bench-worker")
    observer = TaskManager(redis=url, prefix=prefix, instance_id="bench-observer")
    try:
        await observer.start()
        await tm.start()
        await taskward_bursts(tm, observer, args.burst, args.warmup, args.items, None)
        bursts = Run()
        await taskward_bursts(tm, observer, args.burst, args.bursts, args.items, bursts)
        sequential = (
            await taskward_sequential(tm, observer, args.sequential) if args.sequential else None
        )
        left = await observer.records(status=TaskStatus.RUNNING, limit=10_000)
        non_terminal = len(left.records) + tm.running_count
        info = {"redis": (await conn.client.info("server")).get("redis_version", "?")}
    finally:
        await tm.aclose()
        await observer.aclose()
        await conn.aclose()
        delete_prefix(url, prefix)
    return bursts, sequential, non_terminal, info


def run_baseline(url: str, args: argparse.Namespace) -> dict[str, Any]:
    python = args.baseline_python
    prefix = new_prefix("openwebui")
    command = [
        str(python),
        str(BASELINE_SCRIPT),
        "--redis",
        url,
        "--prefix",
        prefix,
        *("--burst", str(args.burst), "--bursts", str(args.bursts)),
        *("--warmup", str(args.warmup), "--items", str(args.items)),
        *("--sequential", str(args.sequential)),
    ]
    try:
        done = subprocess.run(
            command, stdout=subprocess.PIPE, text=True, check=False, timeout=600, cwd=REPO
        )
    finally:
        delete_keys(url, f"{prefix}:*")
    if done.returncode != 0:
        raise SystemExit(f"the open-webui baseline failed (exit {done.returncode}): {command}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def report(
    args: argparse.Namespace,
    bursts: Run,
    sequential: Run | None,
    non_terminal: int,
    info: dict[str, Any],
    base: dict[str, Any] | None,
) -> None:
    print(
        f"task lifecycles on Redis {info['redis']} ({args.redis_url}), one instance each, "
        f"bursts of {args.burst} concurrent trivial tasks x {args.bursts} (target: taskward >= 4x)"
    )
    head = f"{'contender':<34} {'lifecycles/s':>12}  {'vs open-webui':>13}  {'round trips/lc':>14}"
    print(head + "  left behind")
    ob = base["burst"] if base else None
    if ob is not None:
        left = ob["left_behind"]
        print(
            f"{'open-webui 0.12.4 create_task':<34} {ob['per_second']:>12,.0f}  {'1.00x':>13}  "
            f"{ob['round_trips_per_lifecycle']:>14.3f}  {left['hash_entries']} of "
            f"{ob['lifecycles_incl_warmup']:,} entries ({left['listed_running']} listed as "
            f"running by another instance)"
        )
    ratio = fmt_ratio(bursts.per_second / ob["per_second"]) if ob else "-"
    rt_ratio = (
        f" ({ob['round_trips_per_lifecycle'] / bursts.round_trips_per_lifecycle:.0f}x fewer)"
        if ob
        else ""
    )
    print(
        f"{'taskward create_task + wait':<34} {bursts.per_second:>12,.0f}  {ratio:>13}  "
        f"{bursts.round_trips_per_lifecycle:>14.3f}  {non_terminal} non-terminal records{rt_ratio}"
    )
    print(
        f"  read back by a second instance: {bursts.lifecycles - bursts.wrong:,} of "
        f"{bursts.lifecycles:,} completed with their result "
        f"({bursts.lifecycles / bursts.verify_seconds:,.0f} reads/s, not in the figure above)"
    )
    if sequential is not None:
        seq_base = base.get("sequential") if base else None
        print(f"one task at a time (create, then wait), {sequential.lifecycles:,} lifecycles")
        if seq_base is not None:
            print(
                f"{'open-webui 0.12.4 create_task':<34} {seq_base['per_second']:>12,.0f}  {'1.00x':>13}  "
                f"{seq_base['round_trips_per_lifecycle']:>14.3f}  {seq_base['hash_entries_left']} entries  "
                f"({1e6 / seq_base['per_second']:.0f} us each)"
            )
        ratio = fmt_ratio(sequential.per_second / seq_base["per_second"]) if seq_base else "-"
        seq_rt = (
            f", {seq_base['round_trips_per_lifecycle'] / sequential.round_trips_per_lifecycle:.2f}x"
            " fewer round trips"
            if seq_base
            else ""
        )
        print(
            f"{'taskward create_task + wait':<34} {sequential.per_second:>12,.0f}  {ratio:>13}  "
            f"{sequential.round_trips_per_lifecycle:>14.3f}  {sequential.wrong} wrong on read-back"
            f"  ({1e6 / sequential.per_second:.0f} us each{seq_rt})"
        )
    if base is not None and "as_shipped" in base:
        shipped = base["as_shipped"]
        print(
            f"open-webui as shipped (redis-py {base['redis_py']} default pool of "
            f"{shipped['pool_max_connections']} connections; the runs above used "
            f"{base['pool_max_connections']}): one burst of {shipped['size']}: "
            f"{shipped['create_errors']} creates raised, {shipped['cleanup_errors']} cleanups "
            f"raised, {shipped['hash_entries_left']} Redis entries and "
            f"{shipped['local_entries_left']} local entries left behind"
        )


async def main(args: argparse.Namespace) -> int:
    with redis_server(args) as url:
        args.redis_url = url
        base = None if args.no_baseline else run_baseline(url, args)
        bursts, sequential, non_terminal, info = await run_taskward(url, args)
    report(args, bursts, sequential, non_terminal, info, base)
    problems = []
    if non_terminal:
        problems.append(f"{non_terminal} taskward records left non-terminal")
    wrong = bursts.wrong + (sequential.wrong if sequential else 0)
    if wrong:
        problems.append(f"{wrong} taskward records not read back as completed with their result")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_redis_arguments(parser)
    parser.add_argument("--burst", type=int, default=400, help="concurrent tasks per burst")
    parser.add_argument("--bursts", type=int, default=50, help="measured bursts")
    parser.add_argument("--warmup", type=int, default=2, help="bursts before measuring")
    parser.add_argument("--items", type=int, default=64, help="distinct item (chat) ids")
    parser.add_argument("--sequential", type=int, default=2000, help="one-at-a-time; 0 skips")
    parser.add_argument("--quick", action="store_true", help="5 bursts, 200 sequential")
    parser.add_argument(
        "--baseline-python",
        default=str(BASELINE_PYTHON),
        help="python of the open-webui venv (made by bench/setup_openwebui.sh)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="taskward only")
    parsed = parser.parse_args()
    if parsed.quick:
        parsed.bursts, parsed.sequential, parsed.warmup = 5, 200, 1
    if not parsed.no_baseline and not os.access(parsed.baseline_python, os.X_OK):
        raise SystemExit(
            f"no open-webui venv at {parsed.baseline_python}: run `bash bench/setup_openwebui.sh`"
            " first (or pass --no-baseline)"
        )
    sys.exit(asyncio.run(main(parsed)))
