"""What the Redis benchmarks share: the server to use, key prefixes, cleanup, statistics.

Every benchmark talks to the Redis at ``127.0.0.1:6379`` unless given
``--redis URL``, or starts a throwaway server of its own with
``--start-server`` (`tests/servers.py`). It writes under a key prefix of its
own and deletes those keys when it ends.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from taskward.stores.keys import Keys

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator, Sequence

__all__ = [
    "DEFAULT_REDIS",
    "REPO",
    "add_redis_arguments",
    "delete_keys",
    "delete_prefix",
    "fmt_ratio",
    "new_prefix",
    "percentile",
    "redis_server",
]

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
REPO = Path(__file__).resolve().parent.parent


def add_redis_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis",
        default=DEFAULT_REDIS,
        metavar="URL",
        help=f"Redis or Valkey server to use (default {DEFAULT_REDIS})",
    )
    parser.add_argument(
        "--start-server",
        action="store_true",
        help="start a throwaway redis-server/valkey-server on a free port instead of --redis",
    )


@contextmanager
def redis_server(args: argparse.Namespace) -> Iterator[str]:
    """The URL to benchmark against; exits with a clear message if no server answers."""
    if args.start_server:
        with _servers_module().ServerProcess() as server:
            yield str(server.url)
        return
    url: str = args.redis
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as client:
            client.ping()
    except (redis.RedisError, OSError) as exc:
        raise SystemExit(
            f"no Redis server answers at {url} ({exc}).\n"
            "Start one, point --redis at one, or pass --start-server to start a throwaway one."
        ) from None
    yield url


@functools.cache
def _servers_module() -> Any:
    """`tests/servers.py`, which knows how to start a real server process."""
    path = REPO / "tests" / "servers.py"
    spec = importlib.util.spec_from_file_location("servers", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def new_prefix(kind: str) -> str:
    """A fresh key prefix for one benchmark run."""
    return f"twbench-{kind}-{uuid.uuid4().hex[:10]}"


def delete_keys(url: str, pattern: str) -> int:
    """Delete the keys matching `pattern` (SCAN + UNLINK); how many were deleted."""
    deleted: int = _servers_module().delete_matching(url, pattern)
    return deleted


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key of a taskward prefix."""
    return delete_keys(url, Keys(prefix).pattern)


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) of `values`, nearest rank."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def fmt_ratio(value: float) -> str:
    return f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"
