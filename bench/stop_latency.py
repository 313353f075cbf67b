"""Cross-instance stop latency: from `stop_task` on one process to confirmed cancellation.

Process A (this script with ``--worker``, a subprocess) runs a `TaskManager`
with `--stops` + `--warmup` tasks that wait forever. Process B (this script) is
another instance on the same prefix; it stops A's tasks one at a time with
``await tm.stop_task(task_id)`` and times each call, which returns once A has
confirmed the cancellation (outcome ``cancelled``). The baseline is the Redis
round-trip time (PING) measured by B in the same run.

    python bench/stop_latency.py [--stops 1000] [--quick] [--redis URL | --start-server]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter

import redis.asyncio as aioredis

from _common import (
    add_redis_arguments,
    delete_prefix,
    fmt_ratio,
    new_prefix,
    percentile,
    redis_server,
)
from taskward import StopOutcome, TaskManager

TARGET_P99_MS = 5.0


async def forever() -> None:
    await asyncio.Event().wait()


async def worker(url: str, prefix: str, tasks: int) -> None:
    """Process A: start the tasks, print their ids, run until stdin closes."""
    async with TaskManager(
        redis=url, prefix=prefix, instance_id=f"stop-worker-{os.getpid()}", shutdown_grace=0.5
    ) as tm:
        ids = await asyncio.gather(*(tm.create_task(forever(), name="wait") for _ in range(tasks)))
        print(json.dumps(ids), flush=True)
        await asyncio.to_thread(sys.stdin.read)


async def ping_rtts(url: str, n: int) -> list[float]:
    """Seconds per PING, one at a time, on a fresh client (after one to connect)."""
    async with aioredis.Redis.from_url(url) as client:
        await client.ping()
        rtts = []
        for _ in range(n):
            start = time.perf_counter()
            await client.ping()
            rtts.append(time.perf_counter() - start)
    return rtts


async def measure(url: str, args: argparse.Namespace) -> int:
    prefix = new_prefix("stop")
    total = args.stops + args.warmup
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, __file__, "--worker", "--redis", url, "--prefix", prefix),
        *("--tasks", str(total)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None  # both are PIPEs
        line = await proc.stdout.readline()
        if not line:
            code = await proc.wait()
            raise SystemExit(f"the worker process exited ({code}) before starting its tasks")
        ids: list[str] = json.loads(line)
        async with TaskManager(redis=url, prefix=prefix, instance_id="stop-bench") as tm:
            for task_id in ids[: args.warmup]:
                await tm.stop_task(task_id)
            rtts = await ping_rtts(url, args.pings)
            latencies: list[float] = []
            outcomes: Counter[str] = Counter()
            for task_id in ids[args.warmup :]:
                start = time.perf_counter()
                result = await tm.stop_task(task_id)
                latencies.append(time.perf_counter() - start)
                outcomes[result.outcome.value] += 1
            rtts += await ping_rtts(url, args.pings)
        proc.stdin.close()
        async with asyncio.timeout(30):
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        delete_prefix(url, prefix)
    report(args, url, latencies, rtts, outcomes)
    if outcomes[StopOutcome.CANCELLED.value] != len(latencies):
        print(
            f"PROBLEM: not every stop was confirmed as cancelled: {dict(outcomes)}", file=sys.stderr
        )
        return 1
    return 0


def report(
    args: argparse.Namespace,
    url: str,
    latencies: list[float],
    rtts: list[float],
    outcomes: Counter[str],
) -> None:
    ms = [x * 1e3 for x in latencies]
    rtt = percentile(rtts, 50) * 1e3
    p50, p90, p99, worst = (percentile(ms, q) for q in (50, 90, 99, 100))
    print(
        f"cross-instance stop on {url}: {len(ms)} tasks of process A stopped one at a time "
        "from process B, request to confirmed cancellation"
    )
    print(
        f"{'redis PING round trip (baseline)':<34} p50 {rtt:6.3f} ms  "
        f"p99 {percentile(rtts, 99) * 1e3:6.3f} ms  ({len(rtts)} pings, same run)"
    )
    verdict = "meets" if p99 < TARGET_P99_MS else "MISSES"
    print(
        f"{'taskward stop_task':<34} p50 {p50:6.3f} ms  p90 {p90:6.3f} ms  p99 {p99:6.3f} ms  "
        f"max {worst:6.3f} ms   p50 = {fmt_ratio(p50 / rtt)} RTT, p99 = {fmt_ratio(p99 / rtt)} RTT "
        f"({verdict} p99 < {TARGET_P99_MS:g} ms)"
    )
    print(f"  outcomes: {', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))}")
    print(
        "open-webui 0.12.4 stop_task: answers 'stopped' after HGET + PUBLISH + cleanup pipeline, "
        "without waiting for the task (and for unknown ids too); it never confirms a "
        "cancellation, so there is no latency to compare"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_redis_arguments(parser)
    parser.add_argument("--stops", type=int, default=1000, help="measured stops")
    parser.add_argument("--warmup", type=int, default=20, help="stops before measuring")
    parser.add_argument("--pings", type=int, default=1000, help="PINGs before and after")
    parser.add_argument("--quick", action="store_true", help="100 stops, 200 pings")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, default=0, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.worker:
        asyncio.run(worker(parsed.redis, parsed.prefix, parsed.tasks))
        sys.exit(0)
    if parsed.quick:
        parsed.stops, parsed.pings = 100, 200

    async def main() -> int:
        with redis_server(parsed) as url:
            return await measure(url, parsed)

    sys.exit(asyncio.run(main()))
