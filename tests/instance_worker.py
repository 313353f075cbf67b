"""One taskward instance in its own OS process, driven over JSON lines (a test program).

Started by the distributed tests (see ``tests/distributed_helpers.py``)::

    python tests/instance_worker.py --redis URL --prefix P --instance-id ID \
        [--heartbeat 0.2 --liveness-ttl 1.0 --stop-timeout 5 --result-ttl 3600 \
         --max-output 1000 --secret S --retry-budget SECONDS --delivery-timeout 300 \
         --delivery-attempt-timeout 10]

It runs one `TaskManager` against the given server and prints one JSON line
``{"event": "ready", "instance_id": ..., "pid": ...}`` once the manager has
started. Then it reads one JSON object per line on stdin and answers each with
one JSON line on stdout carrying the same ``id``: ``{"id": n, "ok": true, ...}``,
or ``{"id": n, "ok": false, "error": {"type": ..., "message": ...}}``. Commands
run concurrently (a ``wait`` does not hold up a ``stop``).

Ops (arguments after the op):

- ``create`` kind [seconds, result, steps, interval, message] [item_id, user_id, name]
  -> ``task_id``. Kinds: ``sleep`` (sleep `seconds`, return `result`), ``noop``
  (return `result` at once), ``swallow-cancel`` (run `seconds`, swallowing every
  cancellation), ``progress`` (`steps` x: emit a line, report progress, sleep
  `interval`; then sleep `seconds`; return `result`), ``fail`` (raise ValueError).
- ``burst`` n kind [seconds, jitter, item_id, user_id] -> ``task_ids`` (created concurrently)
- ``stop`` task_id [user_id] -> ``result`` (a StopResult dict)
- ``get`` task_id [user_id] -> ``record`` (a TaskRecord dict or null)
- ``list`` [user_id, item_id, status, limit, cursor] -> ``records``, ``cursor``
- ``wait`` task_id [timeout, user_id] -> ``record``
- ``await_result`` task_id [timeout, user_id] -> ``text``
- ``read_output`` task_id [after, limit] -> ``chunks`` ([seq, data, at] lists)
- ``running_count`` -> ``count``; ``stats`` -> running, local, backlog, connected
- ``redirect`` task_id channel_id platform [max_chars, user_id] -> ``redirected``
  (adapters configured by the environment, e.g. ``TASKWARD_WEBHOOK_URL``)
- ``ping`` -> {}; ``quit`` -> closes the manager, answers, exits 0

EOF on stdin or SIGTERM also closes the manager and exits. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
from typing import TYPE_CHECKING, Any, cast

import taskward
from taskward import TaskManager

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from taskward.stores.base import Store

logger = logging.getLogger("instance_worker")

# -- task bodies -------------------------------------------------------------------


async def sleep_task(seconds: float, result: Any) -> Any:
    await asyncio.sleep(seconds)
    return result


async def noop_task(result: Any) -> Any:
    return result


async def swallow_cancel_task(seconds: float) -> dict[str, int]:
    """Runs `seconds` whatever happens: a task that never honours cancellation."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    swallowed = 0
    while (left := deadline - loop.time()) > 0:
        try:
            await asyncio.sleep(left)
        except asyncio.CancelledError:
            swallowed += 1  # deliberately misbehaving: the cancellation is dropped
    return {"swallowed": swallowed}


async def progress_task(steps: int, interval: float, seconds: float, result: Any) -> Any:
    for i in range(1, steps + 1):
        taskward.emit(f"line {i}")
        taskward.report_progress(i / steps, f"step {i}/{steps}")
        await asyncio.sleep(interval)
    await asyncio.sleep(seconds)
    return result


async def fail_task(message: str) -> None:
    raise ValueError(message)


def make_body(cmd: dict[str, Any]) -> Coroutine[Any, Any, Any]:
    kind = cmd.get("kind", "sleep")
    seconds = float(cmd.get("seconds", 0.0))
    result = cmd.get("result")
    if kind == "sleep":
        if cmd.get("jitter"):
            seconds = random.uniform(0.0, seconds)
        return sleep_task(seconds, result)
    if kind == "noop":
        return noop_task(result)
    if kind == "swallow-cancel":
        return swallow_cancel_task(seconds)
    if kind == "progress":
        return progress_task(
            int(cmd.get("steps", 5)), float(cmd.get("interval", 0.01)), seconds, result
        )
    if kind == "fail":
        return fail_task(str(cmd.get("message", "failed on purpose")))
    if kind == "unencodable":  # a result JSON has no form for: tuple keys
        return noop_task({(1, 2): "x"})
    if kind == "surrogate":  # a result with a lone surrogate, as os.fsdecode makes
        return noop_task(os.fsdecode(b"report-\xff.txt"))
    raise ValueError(f"unknown task kind {kind!r}")


# -- ops ---------------------------------------------------------------------------------


async def op_create(tm: TaskManager, cmd: dict[str, Any]) -> dict[str, Any]:
    task_id = await tm.create_task(
        make_body(cmd),
        cmd.get("item_id"),
        user_id=cmd.get("user_id"),
        name=cmd.get("name") or cmd.get("kind", "sleep"),
    )
    return {"task_id": task_id}


async def op_burst(tm: TaskManager, cmd: dict[str, Any]) -> dict[str, Any]:
    n = int(cmd["n"])
    ids = await asyncio.gather(
        *(
            tm.create_task(
                make_body(cmd),
                cmd.get("item_id"),
                user_id=cmd.get("user_id"),
                name=cmd.get("kind", "sleep"),
            )
            for _ in range(n)
        )
    )
    return {"task_ids": list(ids)}


async def op_stop(tm: TaskManager, cmd: dict[str, Any]) -> dict[str, Any]:
    result = await tm.stop_task(cmd["task_id"], cmd.get("user_id"))
    return {"result": result.to_dict()}


async def op_get(tm: TaskManager, cmd: dict[str, Any]) -> dict[str, Any]:
    rec = await tm.get_record(cmd["task_id"], cmd.get("user_id"))
    return {"record": None if rec is None else rec.to_dict()}


async def op_list(tm: TaskManager, cmd: dict[str, Any]) -> dict[str, Any]:
    page = await tm.records(
        user_id=cmd.get("user_id"),
        item_id=cmd.get("item_id"),
        status=cmd.get("status"),
        limit=int(cmd.get("limit", 100)),
        cursor=cmd.get("cursor"),
    )
    return {"records": [r.to_dict() for r in page.records], "cursor": page.cursor}


async def op_wait(tm: TaskManager, cmd: dict[str, Any]) -> dict[str, Any]:
    rec = await tm.wait(cmd["task_id"], cmd.get("timeout"), user_id=cmd.get("user_id"))
    return {"record": rec.to_dict()}


async def op_await_result(tm: TaskManager, cmd: dict[str, Any]) -> dict[str, Any]:
    text = await tm.await_result(
        cmd["task_id"], float(cmd.get("timeout", 300.0)), cmd.get("user_id")
    )
    return {"text": text}


async def op_read_output(tm: TaskManager, cmd: dict[str, Any]) -> dict[str, Any]:
    chunks = await tm.read_output(
        cmd["task_id"], after=int(cmd.get("after", 0)), limit=int(cmd.get("limit", 1000))
    )
    return {"chunks": [[c.seq, c.data, c.at] for c in chunks]}


async def op_running_count(tm: TaskManager, cmd: dict[str, Any]) -> dict[str, Any]:
    return {"count": tm.running_count}


async def op_stats(tm: TaskManager, cmd: dict[str, Any]) -> dict[str, Any]:
    # Private state, read for tests only: handles kept, writes queued, outage mode.
    return {
        "running": tm.running_count,
        "local": len(tm._table.rows),
        "backlog": tm._flusher.backlog,
        "connected": tm._keeper.connected,
    }


async def op_redirect(tm: TaskManager, cmd: dict[str, Any]) -> dict[str, Any]:
    done = await tm.set_output_redirect(
        cmd["task_id"],
        cmd["channel_id"],
        cmd["platform"],
        int(cmd.get("max_chars", 0)),
        user_id=cmd.get("user_id"),
    )
    return {"redirected": done}


async def op_ping(tm: TaskManager, cmd: dict[str, Any]) -> dict[str, Any]:
    return {}


OPS: dict[str, Callable[[TaskManager, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "create": op_create,
    "burst": op_burst,
    "stop": op_stop,
    "get": op_get,
    "redirect": op_redirect,
    "list": op_list,
    "wait": op_wait,
    "await_result": op_await_result,
    "read_output": op_read_output,
    "running_count": op_running_count,
    "stats": op_stats,
    "ping": op_ping,
}


# -- the program -------------------------------------------------------------------------


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()


class Worker:
    def __init__(self, tm: TaskManager, closers: list[Callable[[], Awaitable[None]]]) -> None:
        self.tm = tm
        self.closers = closers
        self.inflight: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()
        self.quit_id: Any = None

    async def handle(self, cmd: dict[str, Any]) -> None:
        msg_id = cmd.get("id")
        try:
            op = OPS.get(str(cmd.get("op")))
            if op is None:
                raise ValueError(f"unknown op {cmd.get('op')!r}")
            answer = await op(self.tm, cmd)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is answered, never raised
            reply(
                {
                    "id": msg_id,
                    "ok": False,
                    "error": {"type": type(exc).__name__, "message": str(exc)},
                }
            )
            return
        reply({"id": msg_id, "ok": True, **answer})

    def dispatch(self, line: bytes) -> None:
        try:
            cmd = json.loads(line)
            if not isinstance(cmd, dict):
                raise TypeError("a command must be a JSON object")
        except (TypeError, ValueError) as exc:
            reply({"id": None, "ok": False, "error": {"type": "BadCommand", "message": str(exc)}})
            return
        if cmd.get("op") == "quit":
            self.done.set()
            self.quit_id = cmd.get("id")
            return
        task = asyncio.create_task(self.handle(cmd))
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def read_commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 24)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while not self.done.is_set():
            line = await reader.readline()
            if not line:
                break  # EOF: whoever drove us is gone
            if line.strip():
                self.dispatch(line)
        self.done.set()

    async def close(self) -> None:
        for task in list(self.inflight):
            task.cancel()
        await asyncio.gather(*self.inflight, return_exceptions=True)
        await self.tm.aclose()
        for closer in self.closers:
            await closer()


def build_manager(args: argparse.Namespace) -> tuple[TaskManager, list[Any]]:
    common: dict[str, Any] = {
        "instance_id": args.instance_id,
        "heartbeat_interval": args.heartbeat,
        "liveness_ttl": args.liveness_ttl,
        "stop_timeout": args.stop_timeout,
        "shutdown_grace": 0.0,
        "shutdown_timeout": 2.0,
        "delivery_timeout": args.delivery_timeout,
        "delivery_attempt_timeout": args.delivery_attempt_timeout,
    }
    retention: dict[str, Any] = {"result_ttl": args.result_ttl, "max_output": args.max_output}
    if args.retry_budget is None:
        tm = TaskManager(
            redis=args.redis, prefix=args.prefix, secret=args.secret, **retention, **common
        )
        return tm, []
    # A shorter retry budget than the default needs the store built by hand.
    from taskward._redis import connect
    from taskward.bus.redis import RedisBus
    from taskward.stores.base import Retention
    from taskward.stores.keys import Keys
    from taskward.stores.redis import RedisStore

    keys = Keys(args.prefix)
    connection = connect(args.redis)
    store = RedisStore(
        connection.client,
        keys=keys,
        retention=Retention(**retention),
        retry_budget=args.retry_budget,
    )
    bus = RedisBus(connection, keys=keys, secret=args.secret)
    # cast: RedisStore is meant to satisfy the Store protocol (checked by src's own typing).
    return TaskManager(store=cast("Store", store), bus=bus, **common), [connection]


async def main(args: argparse.Namespace) -> int:
    tm, owned = build_manager(args)
    worker = Worker(tm, [c.aclose for c in owned])
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.done.set)
    try:
        await tm.start()
        reply({"event": "ready", "instance_id": tm.instance_id, "pid": os.getpid()})
        reader = asyncio.create_task(worker.read_commands())
        await worker.done.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    finally:
        await worker.close()
    if worker.quit_id is not None:
        reply({"id": worker.quit_id, "ok": True})
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--liveness-ttl", type=float, default=3.0)
    parser.add_argument("--stop-timeout", type=float, default=5.0)
    parser.add_argument("--result-ttl", type=float, default=3600.0)
    parser.add_argument("--max-output", type=int, default=1000)
    parser.add_argument("--secret", default=None)
    parser.add_argument("--retry-budget", type=float, default=None)
    parser.add_argument("--delivery-timeout", type=float, default=300.0)
    parser.add_argument("--delivery-attempt-timeout", type=float, default=10.0)
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    logging.basicConfig(
        level=arguments.log_level,
        stream=sys.stderr,
        format=f"%(asctime)s {arguments.instance_id} %(name)s %(levelname)s %(message)s",
    )
    sys.exit(asyncio.run(main(arguments)))
