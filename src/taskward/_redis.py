"""Connections to Redis or Valkey: URLs, clients, the pub/sub connection, retries.

Importing this module needs redis-py: ``pip install 'taskward[redis]'``.

URLs (``s`` after ``redis`` means TLS):

- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...``,
  ``unix://[[user]:password@]/path/to/socket[?db=N]``: one server, parsed by redis-py.
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/<master>[/db]
  [?sentinel_password=...&sentinel_username=...]`` (and ``rediss+sentinel://``): the
  credentials in front are the master's; the sentinels' go in the query.
- ``redis+cluster://[[user]:password@]host:port[,host:port...]`` (and ``rediss+cluster://``).

Failover. redis-py's own machinery follows the current master (Sentinel
connection pool) or the slot map (Cluster client); on top of it,
`call_with_retry` re-runs a whole operation — a pipeline or a Lua script, not
only a single command — on connection errors and READONLY replies, with
jittered exponential backoff (redis-py's `Retry`) for a bounded total time.
That is safe because every write taskward sends is idempotent.

Timeouts. Every client `connect` builds has a socket timeout (a command waits
`socket_timeout` seconds for its reply, 5 s unless told otherwise) and a
connect timeout (`connect_timeout`, 2 s: TCP and TLS). A server that accepts
connections but does not answer — stopped (SIGSTOP), swapping, black-holed
behind a half-open connection — therefore fails a call after one socket
timeout instead of hanging it. Such a timeout is not retried, neither here
nor by redis-py's client retries: a server silent for that long would most
likely stay silent for the next attempt too, and every retry would make the
caller wait one more timeout. The caller gets `StoreUnavailable` (the manager
queues its writes and reconnects on its own timer). Errors that come fast —
a refused or reset connection, a failover — are retried as above. (A Cluster
client retries by error class, timeouts included, so the one `connect` builds
leaves every retry to `call_with_retry`, which refreshes the slot map on its
next attempt as redis-py would; a refresh may ask the silent node as well, so
an operation there costs at most two timeouts.) On Sentinel, a master that does not answer
times out like any server; if no sentinel answers, finding the master fails
like a failover in progress, and is retried within the budget.

Blocking pub/sub reads (the bus's listener) are exempt from the socket
timeout: redis-py 8.1+ waits for messages without it, while the reconnect
and resubscribe steps still honour it. A client the caller passes in is used
as it is: its own timeouts apply (with none, a silent server holds a call
until the store's retry budget ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

try:
    import redis.asyncio as aioredis
    from redis import exceptions as rx
    from redis.asyncio.client import PubSub
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel
    from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "taskward's Redis support needs the redis package: install taskward[redis]"
    ) from exc

from ._checks import check_positive
from .errors import StoreUnavailable

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_RETRY_BUDGET",
    "DEFAULT_SOCKET_TIMEOUT",
    "RETRYABLE_ERRORS",
    "UNAVAILABLE_ERRORS",
    "Client",
    "CountingConnection",
    "ExponentialWithJitterBackoff",
    "PubSub",
    "RedisCluster",
    "RedisConnection",
    "RedisTarget",
    "call_with_retry",
    "connect",
    "parse_url",
    "raise_if_cancelling",
    "rx",
    "server_command_count",
    "unavailable",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Client = aioredis.Redis | RedisCluster

#: Seconds an operation keeps retrying through an outage or failover before giving up.
DEFAULT_RETRY_BUDGET = 10.0
#: Seconds a command waits for the server's reply (clients built by `connect`).
DEFAULT_SOCKET_TIMEOUT = 5.0
#: Seconds opening a connection (TCP, and TLS for ``rediss``) may take.
DEFAULT_CONNECT_TIMEOUT = 2.0
RETRY_BASE = 0.05
RETRY_CAP = 1.0
#: Errors after which the same operation may simply be sent again. Not a
#: timeout: see "Timeouts" in the module docstring.
RETRYABLE_ERRORS: tuple[type[rx.RedisError], ...] = (
    rx.ConnectionError,  # includes MasterNotFoundError and BusyLoadingError
    rx.ReadOnlyError,  # a demoted master, before the client notices the failover
    rx.ClusterDownError,
    rx.TryAgainError,
)
#: Errors meaning Redis could not be reached, once retries are spent: callers
#: answer them with `StoreUnavailable` (see `unavailable`). `OSError` covers the
#: built-in `TimeoutError` (which `asyncio.TimeoutError` is) besides socket errors.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (*RETRYABLE_ERRORS, rx.TimeoutError, OSError)
# Stateless (redis-py's jittered backoff keeps nothing between calls): built once.
_RETRY = Retry(ExponentialWithJitterBackoff(cap=RETRY_CAP, base=RETRY_BASE), -1, RETRYABLE_ERRORS)
# The client we build retries a little itself (quick reconnects after a dropped
# connection, never after a timeout); the long wait through a failover is
# `call_with_retry`'s, bounded by its budget.
_CLIENT_RETRIES = 2

_SENTINEL_PORT = 26379
_REDIS_PORT = 6379
_SENTINEL_PARAMS = frozenset({"sentinel_password", "sentinel_username"})


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a Redis URL names. `url` is kept for the standalone kinds (redis-py parses it)."""

    kind: Literal["standalone", "sentinel", "cluster"]
    url: str = ""
    hosts: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: bool = False

    def sentinel_options(self, base: dict[str, Any]) -> dict[str, Any]:
        """`base` plus the sentinels' own credentials: the ``sentinel_kwargs`` redis-py takes."""
        opts = dict(base)
        if self.sentinel_password is not None:
            opts["password"] = self.sentinel_password
        if self.sentinel_username is not None:
            opts["username"] = self.sentinel_username
        return opts


def parse_url(url: str) -> RedisTarget:
    """Parse a taskward Redis URL; ValueError if it is not one (see the module docstring)."""
    if not isinstance(url, str):
        raise TypeError(f"a Redis URL must be a str, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"not a Redis URL (no scheme): {url!r}")
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget("standalone", url=url)
    base, _, kind = scheme.partition("+")
    if base not in ("redis", "rediss") or kind not in ("sentinel", "cluster"):
        raise ValueError(
            f"unsupported Redis URL scheme {scheme!r}: use redis, rediss, unix, "
            "redis+sentinel, rediss+sentinel, redis+cluster or rediss+cluster"
        )
    parts = urlsplit("x://" + rest)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    default_port = _SENTINEL_PORT if kind == "sentinel" else _REDIS_PORT
    hosts = tuple(_parse_host(h, default_port, url) for h in hostlist.split(","))
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    allowed = _SENTINEL_PARAMS if kind == "sentinel" else frozenset()
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} in Redis URL {_redact(url)!r}")
    path = [unquote(p) for p in parts.path.split("/") if p]
    ssl = base == "rediss"
    if kind == "cluster":
        if path not in ([], ["0"]):
            raise ValueError("a Redis Cluster URL takes no path (Cluster only has database 0)")
        return RedisTarget("cluster", hosts=hosts, username=username, password=password, ssl=ssl)
    if not path or len(path) > 2:
        raise ValueError(
            "a Sentinel URL needs the master name as its path: "
            "redis+sentinel://host:port[,host:port]/<master>[/db]"
        )
    db = _parse_db(path[1], url) if len(path) == 2 else 0
    return RedisTarget(
        "sentinel",
        hosts=hosts,
        master=path[0],
        db=db,
        username=username,
        password=password,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
        ssl=ssl,
    )


def _parse_host(item: str, default_port: int, url: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [IPv6]:port
        host, _, tail = item[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"empty host in Redis URL {_redact(url)!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r} in Redis URL {_redact(url)!r}")
    return host, int(port_text)


def _parse_db(text: str, url: str) -> int:
    if not text.isdigit():
        raise ValueError(f"bad database number {text!r} in Redis URL {_redact(url)!r}")
    return int(text)


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.partition("@")
    if not at or ":" not in userinfo:
        return url.split("?", 1)[0]
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{hosts}".split("?", 1)[0]


def _client_retry(kind: str) -> Retry:
    if kind == "cluster":
        # RedisCluster retries ConnectionError, TimeoutError, ClusterDownError and
        # SlotNotCoveredError alike, whatever the Retry supports: none here.
        return Retry(NoBackoff(), 0)
    return Retry(
        ExponentialWithJitterBackoff(cap=0.25, base=0.02),
        _CLIENT_RETRIES,
        supported_errors=(rx.ConnectionError,),
    )


class RedisConnection:
    """The clients taskward uses for one Redis deployment.

    `client` serves commands (the store, and publishing for the bus);
    `open_pubsub()` gives the bus its one subscribing connection. A client
    passed in by the caller is theirs: `aclose()` closes only what `connect`
    created. `socket_timeout` and `connect_timeout` are the timeouts `connect`
    gave the clients it built (None for a caller's client, whose own apply).
    """

    def __init__(
        self,
        client: Client,
        *,
        owned: bool,
        sentinel: Sentinel | None = None,
        target: RedisTarget | None = None,
        socket_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self.client = client
        self.target = target
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self._owned = owned
        self._sentinel = sentinel
        self._closed = False
        self._next_node = -1

    def __repr__(self) -> str:
        kind = self.target.kind if self.target is not None else "client"
        return f"<RedisConnection {kind} owned={self._owned}>"

    @property
    def is_cluster(self) -> bool:
        return isinstance(self.client, RedisCluster)

    async def open_pubsub(self) -> PubSub:
        """A new, unsubscribed pub/sub object; the caller closes it.

        Standalone and Sentinel: from the client's pool, so on Sentinel every
        (re)connection asks the sentinels for the current master. Cluster:
        classic PUBLISH reaches every node, so one connection to any node
        hears everything; each call picks the next node, so a dead node is
        skipped on the following attempt. (Sharded pub/sub would confine
        messages to one shard but needs Redis 7; taskward supports 6.2.)
        """
        client = self.client
        if isinstance(client, RedisCluster):
            async with _cluster_reachability():
                _ = await client.initialize()
            nodes = client.get_nodes()
            if self._next_node < 0:
                self._next_node = random.randrange(len(nodes))
            node = nodes[self._next_node % len(nodes)]
            self._next_node += 1
            return client.pubsub(node=node)
        return client.pubsub()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the clients `connect` created (not a caller's client). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._owned:
            return
        await self.client.aclose()
        if self._sentinel is not None:
            for sentinel_client in self._sentinel.sentinels:
                await sentinel_client.aclose()


def connect(
    redis: str | Client,
    *,
    socket_timeout: float | None = None,
    connect_timeout: float | None = None,
    **options: Any,
) -> RedisConnection:
    """A `RedisConnection` for a URL (see the module docstring) or an existing client.

    For a URL, `socket_timeout` (default `DEFAULT_SOCKET_TIMEOUT`) is how long a
    command waits for its reply and `connect_timeout` (default
    `DEFAULT_CONNECT_TIMEOUT`) how long opening a connection may take; both
    apply to every client built here: the standalone client, the Sentinel
    master's and the sentinels' own, every Cluster node's, and the liveness
    thread's (`taskward._pulse`). A timed-out call raises `StoreUnavailable`
    from the store (see "Timeouts" in the module docstring). For a
    ``redis://`` URL, timeouts in its query string win, as redis-py reads them.

    Other `options` go to the redis-py client taskward builds (for example
    ``ssl_ca_certs``, ``max_connections``). Timeouts and options are refused
    with a client, which is used as it is (never reconfigured, never closed
    here). No I/O happens until the first command.
    """
    if isinstance(redis, aioredis.Redis | RedisCluster):
        if options or socket_timeout is not None or connect_timeout is not None:
            raise TypeError(
                "timeouts and options only apply when connecting from a URL, not to a client"
            )
        return RedisConnection(redis, owned=False)
    if not isinstance(redis, str):
        raise TypeError(
            "redis must be a URL or a redis.asyncio Redis/RedisCluster client, "
            f"not {type(redis).__name__}"
        )
    if "socket_connect_timeout" in options:
        raise TypeError("pass connect_timeout=, not socket_connect_timeout=")
    socket_timeout = _timeout("socket_timeout", socket_timeout, DEFAULT_SOCKET_TIMEOUT)
    connect_timeout = _timeout("connect_timeout", connect_timeout, DEFAULT_CONNECT_TIMEOUT)
    target = parse_url(redis)
    opts: dict[str, Any] = {
        "retry": _client_retry(target.kind),
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        **options,
    }
    if target.kind == "standalone":
        client = aioredis.Redis.from_url(target.url, **opts)
        # The URL's own timeouts, if it has any, are the ones in force.
        given = client.connection_pool.connection_kwargs
        return RedisConnection(
            client,
            owned=True,
            target=target,
            socket_timeout=given.get("socket_timeout", socket_timeout),
            connect_timeout=given.get("socket_connect_timeout", connect_timeout),
        )
    if target.ssl:
        opts.setdefault("ssl", True)
    if target.kind == "cluster":
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
            username=target.username,
            password=target.password,
            **opts,
        )
        return RedisConnection(
            cluster,
            owned=True,
            target=target,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
        )
    sentinel_opts = target.sentinel_options(
        {k: v for k, v in opts.items() if k.startswith(("socket_", "ssl"))}
    )
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_opts)  # type: ignore[no-untyped-call, unused-ignore]
    master = sentinel.master_for(
        target.master,
        redis_class=aioredis.Redis,
        db=target.db,
        username=target.username,
        password=target.password,
        **opts,
    )
    return RedisConnection(
        master,
        owned=True,
        sentinel=sentinel,
        target=target,
        socket_timeout=socket_timeout,
        connect_timeout=connect_timeout,
    )


def _timeout(name: str, value: float | None, default: float) -> float:
    if value is None:
        return default
    check_positive(name, value)
    return float(value)


async def call_with_retry(
    operation: Callable[[], Awaitable[T]], *, budget: float = DEFAULT_RETRY_BUDGET
) -> T:
    """Await `operation()`, calling it again after a retryable error, for at most `budget` s.

    Backoff is redis-py's jittered exponential one. When the budget runs out
    the last retryable error is raised (a redis-py `ConnectionError`, or a
    `TimeoutError` if nothing answered at all), so callers map one family of
    errors (`UNAVAILABLE_ERRORS`). A timeout ends the retries at once (see
    "Timeouts" in the module docstring). The operation must be safe to repeat:
    a failure may come after the server applied it.
    """
    errors: list[Exception] = []

    async def on_failure(error: Exception) -> None:
        raise_if_cancelling(error)
        if not errors:
            logger.info("redis unreachable (%s); retrying for up to %.1fs", error, budget)
        errors[:] = [error]

    async def attempt() -> T:
        try:
            return await operation()
        except rx.RedisClusterException as exc:  # inline: this runs for every store call
            if _is_outage(exc):
                raise _outage(exc) from exc
            raise

    scope = asyncio.timeout(budget)
    try:
        async with scope:
            result = await _RETRY.call_with_retry(attempt, on_failure)
            raise_if_cancelling()
            return result
    except TimeoutError:
        if not scope.expired():
            raise
        if errors:
            raise errors[0] from None
        raise rx.TimeoutError(f"no answer from redis within {budget:g}s") from None


@contextlib.asynccontextmanager
async def _cluster_reachability() -> AsyncIterator[None]:
    try:
        yield
    except rx.RedisClusterException as exc:
        if _is_outage(exc):
            raise _outage(exc) from exc
        raise


def _is_outage(exc: rx.RedisClusterException) -> bool:
    """Whether it is "Redis Cluster cannot be connected" (no node answers), or a
    slot no node serves yet (the slot map of a failover in progress).

    redis-py raises those as `RedisClusterException`s; for taskward they are an
    outage like any other (see `_outage`).
    """
    return isinstance(exc, rx.SlotNotCoveredError) or isinstance(exc.__cause__, UNAVAILABLE_ERRORS)


def _outage(exc: rx.RedisClusterException) -> rx.RedisError:
    """A cluster outage as the error it comes down to: a `TimeoutError` when the
    nodes were silent (not retried), else a `ConnectionError` (retried)."""
    if isinstance(exc.__cause__, rx.TimeoutError | TimeoutError):
        return rx.TimeoutError(str(exc))
    return rx.ConnectionError(str(exc))


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The error callers get when Redis could not be reached."""
    return StoreUnavailable(f"redis unreachable: {exc}")


def raise_if_cancelling(exc: BaseException | None = None) -> None:
    """Raise `CancelledError` if the current task has a cancellation pending.

    A redis-py call can lose a cancellation: on Python 3.11, `asyncio.wait_for`
    (which redis-py's socket reads go through) returns the result and drops the
    cancel when both land in the same loop turn (CPython gh-86296; about one
    cancel in six of a short command, measured with redis-py 8.1), and a
    failing connect can surface as a connection error instead. The request is
    still counted on the task (`Task.cancelling()`), so loops and retries look
    there after each call instead of carrying on and never stopping.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


async def server_command_count(client: Client) -> int:
    """Commands the server(s) processed so far (``INFO stats`` total_commands_processed).

    For benchmarks and tests: the difference between two readings counts the
    commands sent in between, plus one for the first reading's own INFO.
    Commands run inside Lua scripts are counted as well, so compare like with
    like. On Cluster the counts of every node are summed.
    """
    if isinstance(client, RedisCluster):
        replies = await client.info("stats", target_nodes=RedisCluster.ALL_NODES)
        return sum(int(r["total_commands_processed"]) for r in replies.values())
    info = await client.info("stats")
    return int(info["total_commands_processed"])


class CountingConnection(aioredis.Connection):
    """A redis-py connection that counts its writes to the socket: round trips.

    One per command, one per pipeline (connection handshakes count too, so
    measure after a warm-up). For benchmarks and tests on ``redis://`` URLs::

        conn = connect(url, connection_class=CountingConnection)
        before = CountingConnection.round_trips
        ...
        print(CountingConnection.round_trips - before)

    Unlike `server_command_count`, commands inside Lua scripts do not count.
    """

    round_trips: ClassVar[int] = 0

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        CountingConnection.round_trips += 1
        await super().send_packed_command(command, check_health)
