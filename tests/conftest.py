"""Shared fixtures: in-process managers, and real Redis/Valkey processes and the
instances that run on them (see ``tests/servers.py`` and ``tests/distributed_helpers.py``).
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio

from distributed_helpers import ManagerFactory, WorkerPool, delete_prefix
from helpers import Peers
from servers import (
    HOST,
    ClusterProcesses,
    SentinelProcesses,
    ServerProcess,
    delete_matching,
    ping,
)
from taskward import TaskManager
from taskward.stores.keys import Keys

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

REDIS_URL_ENV = "TASKWARD_TEST_REDIS_URL"
DEFAULT_PORT = 6379


# -- in-process managers ---------------------------------------------------------------


@pytest.fixture
def manager_defaults() -> dict[str, Any]:
    """The `TaskManager` arguments `make_manager` uses unless a test passes its own:
    on close, running tasks are cancelled at once and waited for 1 s at most.

    A test module overrides this fixture to add its own, e.g.
    ``return {**manager_defaults, "stop_timeout": 1.0}``.
    """
    return {"shutdown_grace": 0.0, "shutdown_timeout": 1.0}


@pytest.fixture
async def make_manager(
    manager_defaults: dict[str, Any],
) -> AsyncIterator[Callable[..., TaskManager]]:
    """``make_manager(**options)``: a `TaskManager` with `manager_defaults` (overridden by
    `options`); every one made is closed after the test, the last made first."""
    made: list[TaskManager] = []

    def make(**options: Any) -> TaskManager:
        tm = TaskManager(**{**manager_defaults, **options})
        made.append(tm)
        return tm

    yield make
    for tm in reversed(made):
        await tm.aclose()


@pytest.fixture
async def tm(make_manager: Callable[..., TaskManager]) -> TaskManager:
    """A manager from `make_manager` with its defaults."""
    return make_manager()


@pytest.fixture
def peers(make_manager: Callable[..., TaskManager]) -> Peers:
    """``peers(**options)``: managers from `make_manager` sharing one in-memory store and hub."""
    return Peers(make_manager)


# -- servers -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a shared server: ``$TASKWARD_TEST_REDIS_URL``, else a local server on 6379,
    else a server started for the session."""
    if url := os.environ.get(REDIS_URL_ENV):
        yield url
        return
    if ping(HOST, DEFAULT_PORT, timeout=0.5):
        yield f"redis://{HOST}:{DEFAULT_PORT}/0"
        return
    with ServerProcess() as server:
        yield server.url


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A unique ``twtest-<hex12>`` prefix; its keys are deleted afterwards.

    taskward puts a prefix's keys under the hash tag ``{<prefix>}``; keys a test
    writes by hand may start with the bare prefix. Both are cleaned.
    """
    prefix = f"twtest-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_matching(redis_url, f"{prefix}*")
    delete_matching(redis_url, f"\\{{{prefix}}}*")


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A ``redis.asyncio.Redis`` for ``redis_url`` (bytes replies), closed afterwards."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def private_redis() -> Iterator[ServerProcess]:
    """A fresh server owned by the test (may be stopped, killed, restarted)."""
    with ServerProcess() as server:
        yield server


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterProcesses]:
    """A shared 3-master cluster, started on first use. Do not kill its nodes."""
    with ClusterProcesses() as procs:
        yield procs


@pytest.fixture(scope="session")
def sentinel() -> Iterator[SentinelProcesses]:
    """A shared master + replica + 3 sentinels, started on first use. Do not kill the master."""
    with SentinelProcesses() as procs:
        yield procs


@pytest.fixture
def private_sentinel() -> Iterator[SentinelProcesses]:
    """A sentinel set owned by the test (for failovers)."""
    with SentinelProcesses() as procs:
        yield procs


# -- instances in other processes (on the shared server) --------------------------------


@pytest.fixture
async def keys(key_prefix: str, redis_client: redis.asyncio.Redis) -> AsyncIterator[Keys]:
    """Keys for the test's prefix; everything under its hash tag is deleted afterwards."""
    k = Keys(key_prefix)
    yield k
    await delete_prefix(redis_client, k)


@pytest.fixture
async def pool(redis_url: str, keys: Keys) -> AsyncIterator[WorkerPool]:
    """Worker processes on `keys`' prefix, all reaped after the test."""
    async with WorkerPool(redis_url, keys.prefix) as workers:
        yield workers


@pytest.fixture
async def start_manager(redis_url: str, keys: Keys) -> AsyncIterator[ManagerFactory]:
    """``await start_manager(instance_id, **options)``: a started in-process manager on
    `keys`' prefix (one more instance beside the workers), closed after the test."""
    async with ManagerFactory(redis_url, keys.prefix) as factory:
        yield factory
