"""What `ToolRegistry.call` costs over awaiting the tool: a fast tool, same run.

    python bench/tool_calls.py [--calls 2000] [--repeat 5]

The tool does about 100 us of work, two ways: ``await asyncio.sleep(0.0001)``
(on many machines the loop's timer makes that sleep last about a millisecond,
which flatters the ratio) and 100 us of CPU followed by ``await asyncio.sleep(0)``
(work that really takes 100 us, the harder test). Direct: ``await fast(n=1)``. Through the registry: ``await registry.call("fast",
'{"n": 1}', context)``, which parses and validates the JSON arguments, runs the
call as a tracked task on an in-process manager (it beats the timeout, so its
result comes back inline) and encodes the result. Each figure is the median
over the repeats, the two measured in alternation; target: at most 1.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from taskward import Caller, TaskManager
from taskward.tools import ToolContext, ToolRegistry

WORK_SECONDS = 0.0001
#: How the tool spends its 100 us: "sleep" or "cpu" (set by main for each run).
work = "sleep"


async def fast(n: int) -> dict[str, int]:
    """Do about 100 us of work."""
    if work == "sleep":
        await asyncio.sleep(WORK_SECONDS)
    else:
        until = time.perf_counter() + WORK_SECONDS
        while time.perf_counter() < until:
            pass
        await asyncio.sleep(0)
    return {"n": n}


async def per_call_direct(calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await fast(n=1)
    return (time.perf_counter() - started) / calls


async def per_call_registry(registry: ToolRegistry, context: ToolContext, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await registry.call("fast", '{"n": 1}', context)
    return (time.perf_counter() - started) / calls


async def measure(calls: int, repeat: int) -> float:
    registry = ToolRegistry()
    registry.add(fast)
    async with TaskManager(timeout=5.0, result_ttl=5.0, max_finished=1000) as tm:
        context = ToolContext(tm, Caller("bench"))
        assert await registry.call("fast", '{"n": 1}', context) == '{"n":1}'
        await per_call_direct(200)  # warm up both paths
        await per_call_registry(registry, context, 200)
        direct, through = [], []
        for _ in range(repeat):
            direct.append(await per_call_direct(calls))
            through.append(await per_call_registry(registry, context, calls))
    d, r = statistics.median(direct), statistics.median(through)
    ratio = r / d
    print(f"  direct await      {d * 1e6:8.1f} us per call")
    print(f"  registry.call     {r * 1e6:8.1f} us per call   (+{(r - d) * 1e6:.1f} us)")
    print(f"  ratio             {ratio:8.2f}x   (target <= 1.5x)")
    return ratio


async def main(calls: int, repeat: int) -> None:
    global work
    for how, n in (("cpu", calls), ("sleep", max(1, calls // 2))):
        work = how
        label = "100 us of CPU" if how == "cpu" else "asyncio.sleep(0.0001)"
        print(f"{label}, {n} calls x {repeat}:")
        await measure(n, repeat)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.repeat))
