"""Redirect delivery throughput: 1,000 tasks finishing at once, each redirected to a webhook.

A local receiver (a minimal asyncio HTTP/1.1 server in its own process, on a
loopback port) takes the deliveries. taskward's figure runs from the moment every
task is released (they all wait on one event, their redirects already set)
to the arrival of the last delivery: each finish enqueues a delivery in the
store, the deliverer claims it with a lease, signs it and POSTs it. The
baseline, in the same run, POSTs the same 1,000 bodies to the same receiver
with a plain httpx client (as many connections as the adapter uses, all at
once): what sending alone costs. The receiver counts duplicates by
``webhook-id``: there must be none.

    python bench/redirect.py [--tasks 1000] [--repeat 3] [--memory-only]
                             [--redis URL | --start-server]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import httpx

from _common import add_redis_arguments, delete_prefix, fmt_ratio, new_prefix, redis_server
from taskward import TaskManager
from taskward.redirect._http import MAX_CONNECTIONS
from taskward.redirect.signing import generate_secret
from taskward.redirect.webhook import WebhookAdapter

CONNECTIONS = MAX_CONNECTIONS  # what the HTTP adapters' client allows
_SENT = ("webhook-", "content-type")


class Received:
    __slots__ = ("at", "body", "headers")

    def __init__(self, at: float, headers: dict[str, str], body: bytes) -> None:
        self.at, self.headers, self.body = at, headers, body


async def serve(port_out: asyncio.Future[int], requests: list[Received]) -> asyncio.Server:
    """A minimal HTTP/1.1 receiver (keep-alive, Content-Length bodies, 200 to every POST)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                requests.append(Received(time.time(), headers, body))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port_out.set_result(server.sockets[0].getsockname()[1])
    return server


def receive_forever() -> None:
    """The receiver process: answers POSTs; ``GET``-less protocol on stdin: each line
    ``dump`` prints the requests so far as JSON and clears them."""

    async def run() -> None:
        requests: list[Received] = []
        port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        server = await serve(port, requests)
        print(await port, flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "dump":
                out = [[r.at, r.headers, r.body.decode()] for r in requests]
                requests.clear()
                print(json.dumps(out), flush=True)
        server.close()

    asyncio.run(run())


class RemoteReceiver:
    """The receiver process, seen from the benchmark."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--receive"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"
        self.last: list[Received] = []

    def dump(self) -> list[Received]:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.proc.stdin.write("dump\n")
        self.proc.stdin.flush()
        return [Received(at, h, b.encode()) for at, h, b in json.loads(self.proc.stdout.readline())]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


async def released(gate: asyncio.Event, i: int) -> str:
    await gate.wait()
    return f"result {i}"


async def delivered(tm: TaskManager, ids: list[str]) -> bool:
    """Whether every task's record says its delivery is delivered."""
    for task_id in ids:
        rec = await tm.get_record(task_id)
        if rec is None or rec.redirect is None or rec.redirect["state"] != "delivered":
            return False
    return await tm.pending_deliveries() == 0


async def taskward_run(receiver: RemoteReceiver, tasks: int, **options: Any) -> tuple[float, int]:
    """Seconds from release to the last delivery's arrival; duplicates seen."""
    adapter = WebhookAdapter(receiver.url + "/hook", generate_secret())
    async with TaskManager(
        redirect_adapters={"webhook": adapter}, shutdown_grace=0, **options
    ) as tm:
        gate = asyncio.Event()
        ids = [await tm.create_task(released(gate, i), name="bench") for i in range(tasks)]
        for task_id in ids:
            assert await tm.set_output_redirect(task_id, "room", "webhook")
        start = time.time()
        gate.set()
        for task_id in ids:
            await tm.wait(task_id)
        await tm.records(limit=1)  # a listing waits for the writes: every delivery enqueued
        deadline = time.monotonic() + 120
        while await tm.pending_deliveries():
            if time.monotonic() > deadline:
                raise SystemExit("deliveries still pending after 120 s")
            await asyncio.sleep(0.01)
        if not await delivered(tm, ids):
            raise SystemExit("a record does not say delivered")
    got = receiver.dump()
    if len({r.headers["webhook-id"] for r in got}) != tasks:
        raise SystemExit(f"{len(got)} requests, not {tasks} deliveries")
    receiver.last = got
    ids_seen = Counter(r.headers["webhook-id"] for r in got)
    duplicates = sum(n - 1 for n in ids_seen.values())
    return max(r.at for r in got) - start, duplicates


async def plain_run(receiver: RemoteReceiver) -> float:
    """Seconds to POST the bodies taskward sent, with a bare httpx client."""
    bodies = [(r.body, r.headers) for r in receiver.last]
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        slots = asyncio.Semaphore(CONNECTIONS)  # as many in flight as the pool holds

        async def post(body: bytes, headers: dict[str, str]) -> None:
            async with slots:
                response = await client.post(
                    receiver.url + "/hook",
                    content=body,
                    headers={k: v for k, v in headers.items() if k.startswith(_SENT)},
                )
                response.raise_for_status()

        start = time.time()
        await asyncio.gather(*(post(body, headers) for body, headers in bodies))
    return max(r.at for r in receiver.dump()) - start


async def compare(
    receiver: RemoteReceiver, label: str, tasks: int, repeat: int, **options: Any
) -> None:
    ours: list[float] = []
    plain: list[float] = []
    dupes = 0
    for _ in range(repeat):
        seconds, duplicates = await taskward_run(receiver, tasks, **options)
        ours.append(seconds)
        dupes += duplicates
        plain.append(await plain_run(receiver))
    best, base = min(ours), min(plain)
    print(
        f"{label:<8} taskward: {tasks / best:8,.0f} deliveries/s, last after {best * 1000:7.1f} ms"
        f" (median {statistics.median(ours) * 1000:.1f} ms) | plain httpx: "
        f"{tasks / base:8,.0f}/s, last after {base * 1000:7.1f} ms | "
        f"taskward/plain time {fmt_ratio(best / base)} | duplicates: {dupes}"
    )


async def main(args: argparse.Namespace) -> None:
    receiver = RemoteReceiver()
    try:
        print(
            f"{args.tasks} tasks finishing at once, each redirected to a webhook; best of {args.repeat}"
        )
        await compare(receiver, "memory", args.tasks, args.repeat)
        if not args.memory_only:
            with redis_server(args) as url:
                prefix = new_prefix("redirect")
                try:
                    await compare(
                        receiver, "redis", args.tasks, args.repeat, redis=url, prefix=prefix
                    )
                finally:
                    delete_prefix(url, prefix)
    finally:
        receiver.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["--receive"]:
        receive_forever()
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-only", action="store_true")
    add_redis_arguments(parser)
    asyncio.run(main(parser.parse_args()))
