"""Driving taskward instances in separate OS processes (``tests/instance_worker.py``).

`Worker` starts one worker process and talks to it over JSON lines; `WorkerPool`
starts several and always reaps them (kill, then wait) when the test ends, so no
process, pipe or transport outlives the test. Also here: small probes of what a
prefix holds on the server, read with `taskward.stores.keys.Keys` (never a
hand-built key name).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import time
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from taskward import TaskManager
from taskward._sync import cancel_and_wait

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    import redis.asyncio

    from taskward._redis import Client
    from taskward.stores.keys import Keys

__all__ = [
    "WORKER_SCRIPT",
    "ManagerFactory",
    "TcpProxy",
    "Worker",
    "WorkerDied",
    "WorkerError",
    "WorkerPool",
    "delete_prefix",
    "eventually",
    "index_size",
    "members",
    "scan_keys",
    "task_hashes",
    "timed",
]

T = TypeVar("T")

WORKER_SCRIPT = Path(__file__).with_name("instance_worker.py")
#: Seconds a worker may take to import, connect and start its manager.
READY_TIMEOUT = 30.0
#: Default seconds to wait for the answer to one command.
REQUEST_TIMEOUT = 15.0
STDERR_LINES = 300
#: Seconds an in-process manager may take to close before the test calls it hung.
CLOSE_TIMEOUT = 15.0


class _AsyncClosing(ABC):
    """An async context manager that returns itself and calls `aclose()` on exit."""

    @abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class WorkerError(RuntimeError):
    """The worker answered a command with an error (`type` is the exception's class name)."""

    def __init__(self, op: str, type_: str, message: str) -> None:
        super().__init__(f"{op}: {type_}: {message}")
        self.op = op
        self.type = type_
        self.message = message


class WorkerDied(RuntimeError):
    """The worker exited (or closed its stdout) while a command was waiting for an answer."""


class Worker:
    """One worker process. Build with `Worker.launch` (or `WorkerPool.launch`)."""

    def __init__(self, proc: asyncio.subprocess.Process, instance_id: str) -> None:
        self.proc = proc
        self.instance_id = instance_id
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._readers = [
            asyncio.create_task(self._read_stdout(), name=f"worker-{instance_id}-stdout"),
            asyncio.create_task(self._read_stderr(), name=f"worker-{instance_id}-stderr"),
        ]
        self._closed = False

    def __repr__(self) -> str:
        return f"<Worker {self.instance_id} pid={self.proc.pid} rc={self.proc.returncode}>"

    @classmethod
    async def launch(
        cls,
        redis_url: str,
        prefix: str,
        instance_id: str,
        *,
        heartbeat: float = 0.2,
        liveness_ttl: float = 1.0,
        stop_timeout: float = 5.0,
        result_ttl: float = 3600.0,
        max_output: int = 1000,
        secret: str | None = None,
        retry_budget: float | None = None,
        delivery_timeout: float = 300.0,
        delivery_attempt_timeout: float = 10.0,
        log_level: str = "WARNING",
    ) -> Worker:
        argv = [
            str(WORKER_SCRIPT),
            "--redis",
            redis_url,
            "--prefix",
            prefix,
            "--instance-id",
            instance_id,
            "--heartbeat",
            repr(heartbeat),
            "--liveness-ttl",
            repr(liveness_ttl),
            "--stop-timeout",
            repr(stop_timeout),
            "--result-ttl",
            repr(result_ttl),
            "--max-output",
            str(max_output),
            "--delivery-timeout",
            repr(delivery_timeout),
            "--delivery-attempt-timeout",
            repr(delivery_attempt_timeout),
            "--log-level",
            log_level,
        ]
        if secret is not None:
            argv += ["--secret", secret]
        if retry_budget is not None:
            argv += ["--retry-budget", repr(retry_budget)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 24,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        worker = cls(proc, instance_id)
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await worker._ready
        except BaseException:
            await worker.aclose()
            raise
        return worker

    # -- plumbing ----------------------------------------------------------------------

    async def _read_stdout(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None  # PIPE
        try:
            while line := await stdout.readline():
                try:
                    message = json.loads(line)
                except ValueError:
                    self._stderr.append(f"<stdout> {line.decode(errors='replace').rstrip()}")
                    continue
                if message.get("event") == "ready":
                    if not self._ready.done():
                        self._ready.set_result(message)
                    continue
                fut = self._pending.pop(message.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(message)
        finally:
            died = WorkerDied(f"worker {self.instance_id} exited\n{self.stderr_tail()}")
            for fut in [self._ready, *self._pending.values()]:
                if not fut.done():
                    fut.set_exception(died)
                    fut.exception()  # retrieved here: nobody may be waiting any more
            self._pending.clear()

    async def _read_stderr(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None  # PIPE
        while line := await stderr.readline():
            self._stderr.append(line.decode(errors="replace").rstrip())

    def stderr_tail(self, lines: int = 40) -> str:
        """The last lines the worker logged (for assertion messages)."""
        return "\n".join(list(self._stderr)[-lines:])

    @property
    def stderr_text(self) -> str:
        return "\n".join(self._stderr)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def request(
        self, op: str, *, reply_timeout: float = REQUEST_TIMEOUT, **args: Any
    ) -> dict[str, Any]:
        """Send one command and return its answer; WorkerError if it failed."""
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        stdin = self.proc.stdin
        assert stdin is not None  # PIPE
        try:
            stdin.write(json.dumps({"id": msg_id, "op": op, **args}).encode() + b"\n")
            await stdin.drain()
            async with asyncio.timeout(reply_timeout):
                answer = await fut
        except TimeoutError:
            raise TimeoutError(
                f"worker {self.instance_id} did not answer {op} within {reply_timeout}s\n"
                + self.stderr_tail()
            ) from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise WorkerDied(f"worker {self.instance_id} is gone: {exc}") from None
        finally:
            self._pending.pop(msg_id, None)
        if not answer.get("ok"):
            error = answer.get("error") or {}
            raise WorkerError(op, str(error.get("type")), str(error.get("message")))
        return answer

    # -- typed commands ----------------------------------------------------------------

    async def create(
        self,
        kind: str = "sleep",
        *,
        item_id: str | None = None,
        user_id: str | None = None,
        reply_timeout: float = REQUEST_TIMEOUT,
        **args: Any,
    ) -> str:
        answer = await self.request(
            "create",
            kind=kind,
            item_id=item_id,
            user_id=user_id,
            reply_timeout=reply_timeout,
            **args,
        )
        return str(answer["task_id"])

    async def burst(self, n: int, kind: str = "noop", **args: Any) -> list[str]:
        answer = await self.request("burst", n=n, kind=kind, **args)
        return [str(t) for t in answer["task_ids"]]

    async def stop(
        self, task_id: str, user_id: str | None = None, *, reply_timeout: float = REQUEST_TIMEOUT
    ) -> dict[str, Any]:
        answer = await self.request(
            "stop", task_id=task_id, user_id=user_id, reply_timeout=reply_timeout
        )
        result: dict[str, Any] = answer["result"]
        return result

    async def get(self, task_id: str, user_id: str | None = None) -> dict[str, Any] | None:
        answer = await self.request("get", task_id=task_id, user_id=user_id)
        record: dict[str, Any] | None = answer["record"]
        return record

    async def redirect(self, task_id: str, channel_id: str, platform: str, **args: Any) -> bool:
        answer = await self.request(
            "redirect", task_id=task_id, channel_id=channel_id, platform=platform, **args
        )
        return bool(answer["redirected"])

    async def list_records(self, **filters: Any) -> tuple[list[dict[str, Any]], str | None]:
        answer = await self.request("list", **filters)
        return list(answer["records"]), answer["cursor"]

    async def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        budget = REQUEST_TIMEOUT if timeout is None else timeout + REQUEST_TIMEOUT
        answer = await self.request("wait", task_id=task_id, timeout=timeout, reply_timeout=budget)
        record: dict[str, Any] = answer["record"]
        return record

    async def await_result(self, task_id: str, wait_for: float) -> dict[str, Any]:
        """`await_result` on the worker, its JSON text decoded."""
        answer = await self.request(
            "await_result",
            task_id=task_id,
            timeout=wait_for,
            reply_timeout=wait_for + REQUEST_TIMEOUT,
        )
        decoded: dict[str, Any] = json.loads(answer["text"])
        return decoded

    async def read_output(
        self, task_id: str, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, str]]:
        answer = await self.request("read_output", task_id=task_id, after=after, limit=limit)
        return [(int(seq), str(data)) for seq, data, _ in answer["chunks"]]

    async def running_count(self) -> int:
        return int((await self.request("running_count"))["count"])

    async def stats(self) -> dict[str, Any]:
        return await self.request("stats")

    # -- ending ------------------------------------------------------------------------

    async def quit(self, timeout: float = 10.0) -> int:
        """Close the worker's manager cleanly (writes flushed, instance retired); exit code."""
        with contextlib.suppress(WorkerDied):
            await self.request("quit", reply_timeout=timeout)
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
        await self.aclose()
        return code

    async def kill(self) -> None:
        """SIGKILL (a crash: nothing is flushed or retired) and reap."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        await self.aclose()

    async def aclose(self) -> None:
        """Make sure the process is gone and every pipe closed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        stdin = self.proc.stdin
        if stdin is not None:
            stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await stdin.wait_closed()
        await self.proc.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


class WorkerPool(_AsyncClosing):
    """Starts workers for one test and reaps them all on exit (an async context manager)."""

    def __init__(self, redis_url: str, prefix: str, **defaults: Any) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.defaults = defaults
        self.workers: list[Worker] = []

    async def launch(self, instance_id: str, **options: Any) -> Worker:
        options = {**self.defaults, **options}
        url = options.pop("redis_url", self.redis_url)
        worker = await Worker.launch(url, self.prefix, instance_id, **options)
        self.workers.append(worker)
        return worker

    async def launch_many(self, *instance_ids: str, **options: Any) -> list[Worker]:
        return list(await asyncio.gather(*(self.launch(i, **options) for i in instance_ids)))

    def logs(self) -> str:
        return "\n".join(f"--- {w.instance_id}:\n{w.stderr_tail()}" for w in self.workers)

    async def aclose(self) -> None:
        await asyncio.gather(*(w.aclose() for w in self.workers))


class ManagerFactory(_AsyncClosing):
    """In-process `TaskManager`s (the test process as one more instance), closed on exit.

    Defaults to a short heartbeat (0.2 s) and liveness TTL (1 s) and no shutdown grace;
    pass the manager's own keyword arguments to change them.
    """

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.managers: list[TaskManager] = []

    async def __call__(self, instance_id: str, **options: Any) -> TaskManager:
        options.setdefault("redis", self.redis_url)
        options.setdefault("heartbeat_interval", 0.2)
        options.setdefault("liveness_ttl", 1.0)
        options.setdefault("shutdown_grace", 0.0)
        tm = TaskManager(prefix=self.prefix, instance_id=instance_id, **options)
        self.managers.append(tm)
        await tm.start()
        return tm

    async def aclose(self) -> None:
        hung = [tm.instance_id for tm in self.managers if not await close_manager(tm)]
        if hung:
            raise AssertionError(
                f"TaskManager.aclose() hung for {hung}: a background task of the manager "
                "ignored its cancellation (closed here by cancelling it again)"
            )


async def close_manager(tm: TaskManager, timeout: float = CLOSE_TIMEOUT) -> bool:
    """`tm.aclose()`, bounded: False if it hung (then the manager's background tasks are
    cancelled, with the manager's own `cancel_and_wait`, until it ends).

    redis-py on Python 3.11 can swallow the cancellation of a task that is inside a
    Redis call; `aclose()` must not wait on such a task without a bound, and if it
    does, a test must report that, not hang the whole run.
    """
    closer = asyncio.create_task(tm.aclose())
    done, _ = await asyncio.wait([closer], timeout=timeout)
    if done:
        closer.result()
        return True
    while not closer.done():
        stuck = [t for t in asyncio.all_tasks() if t.get_name().startswith("taskward-")]
        await asyncio.gather(*(cancel_and_wait(t, patience=0.2) for t in stuck))
        await asyncio.wait([closer], timeout=0.2)
    with contextlib.suppress(Exception):
        closer.result()
    return False


class TcpProxy(_AsyncClosing):
    """A loopback TCP proxy to a server: `cut()` partitions whoever connects through it.

    While cut, open connections are reset and new ones refused; `heal()` listens
    again on the same port. An async context manager; closes every socket it made.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def heal(self) -> None:
        """Accept connections (again, on the same port)."""
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Reset every connection through the proxy and refuse new ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ):
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)

    async def aclose(self) -> None:
        """The same as `cut()`."""
        await self.cut()

    async def __aenter__(self) -> Self:
        await self.heal()
        return self


# -- probes ------------------------------------------------------------------------------


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "a condition",
    accept: Callable[[T], bool] = bool,
) -> tuple[T, float]:
    """Poll `probe` until `accept(value)`; return the value and the seconds it took."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        value = await probe()
        if accept(value):
            return value, time.monotonic() - start
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {value!r}")
        await asyncio.sleep(interval)


async def timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    """The awaitable's value and the seconds it took."""
    start = time.monotonic()
    value = await awaitable
    return value, time.monotonic() - start


async def scan_keys(client: Client, pattern: str) -> list[str]:
    """Every key matching `pattern` (SCAN; on a cluster, over every node)."""
    found: set[str] = set()
    async for key in client.scan_iter(match=pattern, count=1000):
        found.add(key.decode() if isinstance(key, bytes) else str(key))
    return sorted(found)


async def task_hashes(client: Client, keys: Keys) -> dict[str, dict[str, str]]:
    """Every task record hash under `keys`, by task id (raw short field names)."""
    names = await scan_keys(client, keys.task_prefix + "*")
    if not names:
        return {}
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.execute_command("HGETALL", name)
    replies = await pipe.execute()
    out: dict[str, dict[str, str]] = {}
    for name, raw in zip(names, replies, strict=True):
        out[name.removeprefix(keys.task_prefix)] = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
    return out


async def index_size(client: Client, key: str) -> int:
    """ZCARD or SCARD of `key`, whichever applies (0 if absent)."""
    kind = await client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "zset":
        return int(await client.zcard(key))
    if kind == "set":
        return int(await client.scard(key))
    return 0


async def members(client: Client, key: str) -> list[str]:
    """Members of a sorted set (in score order) or a set (sorted), decoded; [] if absent."""
    kind = await client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "zset":
        raw: list[Any] = list(await client.zrange(key, 0, -1))
    elif kind == "set":
        raw = sorted(await client.smembers(key))
    else:
        return []
    return [m.decode() if isinstance(m, bytes) else str(m) for m in raw]


async def delete_prefix(client: Client | redis.asyncio.Redis, keys: Keys) -> None:
    """Delete every key of a prefix (everything under its hash tag)."""
    names = await scan_keys(client, keys.pattern)
    for i in range(0, len(names), 500):
        await client.delete(*names[i : i + 500])
