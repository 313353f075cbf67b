"""Fixtures backed by real Redis/Valkey processes (see ``tests/servers.py``)."""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

import pytest
import redis.asyncio

from servers import (
    HOST,
    ClusterProcesses,
    SentinelProcesses,
    ServerProcess,
    delete_matching,
    ping,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

REDIS_URL_ENV = "TASKWARD_TEST_REDIS_URL"
DEFAULT_PORT = 6379


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
