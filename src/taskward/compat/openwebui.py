"""open-webui's task functions, run by taskward: switch by changing an import.

Mirrors the task registry of open-webui, ``backend/open_webui/tasks.py``
(checked against open-webui 0.12.4, the version taskward is benchmarked
against, and the 0.6 series), with the same names, arguments, return values
and messages::

    # from open_webui.tasks import create_task, stop_task, ...
    from taskward.compat.openwebui import create_task, stop_task, ...

Every function takes open-webui's ``redis`` argument first and uses it to pick
a `TaskManager`: ``None`` means the in-process default manager; a
``redis.asyncio`` client or a Redis URL means a manager bound to it, one per
client object or URL, created on first use with taskward's default key prefix
(redis is only imported then). Install a configured manager (key prefix,
timeouts) with `set_default_manager`; with Sentinel, open-webui's
``app.state.redis`` is its own proxy class, which taskward does not take, so
install one made from a ``redis+sentinel://`` URL for it::

    set_default_manager(TaskManager(redis=url, prefix="open-webui:taskward"), redis=app.state.redis)

Await `aclose_default_managers` at shutdown: it lets running tasks finish for
the manager's grace period, cancels the rest and records every outcome. These
module-level defaults exist because open-webui's API is module-level; new code
should hold its own `TaskManager`.

Unknown ids are answered as in open-webui 0.12.4, never raised:
``stop_task`` gives ``{"status": False, "message": "Task with ID <id> not
found."}``, the listings give ``[]``, and ``stop_item_tasks`` gives ``{"status":
True, "message": "No tasks found for item <id>."}``. (Only open-webui's
pre-Redis ``stop_task(task_id)`` raised ``ValueError`` for an unknown id; its
``/api/tasks/stop`` endpoint still maps a ``ValueError`` to a 404.)

Where this does better than open-webui:

- A stop is confirmed: ``stop_task`` says whether the task was cancelled,
  finished otherwise, or did not stop in time (``"Cancellation requested for
  <id>."`` after the manager's ``stop_timeout``, the request staying in force).
  With Redis, open-webui publishes a stop command and answers ``"Task <id>
  stopped."`` for every id, unknown or finished ones included, without knowing
  whether any instance held the task; here the answers are the same with or
  without Redis, and a stop that missed its pub/sub message is still honoured.
- With Redis, tasks of an instance that died are marked lost within seconds
  (liveness heartbeats), where open-webui keeps listing them until its per-task
  key expires (``REDIS_TASK_TTL``, 300 s by default).
- Every task's outcome (result, error type and message, cancellation) stays
  readable on its record (`TaskManager.get_record`) after it finished.
- A task that ignores cancellation or raises while being stopped makes
  ``stop_task`` report it, instead of waiting forever or raising out of it.

Deviations, each because taskward cannot or should not do otherwise:

- The task returned by `create_task` is an `asyncio.Task` following the
  coroutine (result, exception, cancellation both ways), not the task running
  it: the manager's own task records a failure instead of raising it.
- Item ids and caller-chosen task ids must be usable taskward ids (at most 256
  characters, no whitespace, control characters or ``{ } * ? [ ] \\ "``);
  `create_task` raises `ValueError` for others, and lookups answer "not found".
- A ``task_id=`` chosen by the caller (open-webui 0.12.4 passes the message's
  id) is the task's id on every instance, unless a finished task still holds
  it: then the new task is known by it to this process only (other instances
  see its taskward id). `cleanup_task` deregisters tasks started by this
  process only.
- ``list_task_ids_by_item_id(redis, None)`` is ``[]`` in both modes (open-webui
  0.12.4 lists every task when given Redis and ``None``), and listings are
  oldest first in both (open-webui's Redis listings come in no set order).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from .._checks import is_coroutine
from .._ids import check_id
from .._records import StopOutcome, TaskStatus
from ..errors import TaskIdInUse
from ..manager import TaskManager

if TYPE_CHECKING:
    from collections.abc import Coroutine

__all__ = (
    "StopReply",
    "aclose_default_managers",
    "cleanup_task",
    "create_task",
    "get_default_manager",
    "has_active_tasks",
    "list_task_ids_by_item_id",
    "list_tasks",
    "redis_task_command_listener",
    "redis_task_heartbeat",
    "set_default_manager",
    "stop_item_tasks",
    "stop_task",
)

logger = logging.getLogger(__name__)

_RUNNING = TaskStatus.RUNNING
_ENDED = frozenset({StopOutcome.CANCELLED, StopOutcome.ALREADY_FINISHED})
LIST_PAGE_SIZE = 1000  # records fetched per page by `list_tasks`
START_RETRY_INTERVAL = 1.0  # first wait before the app coroutines retry a failed start
START_RETRY_MAX_INTERVAL = 30.0  # the longest (the wait doubles), as open-webui's listener


class StopReply(TypedDict):
    """What the stop functions return, as open-webui does: a plain dict."""

    status: bool
    message: str


# -- default managers --------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Registry:
    """What this module knows of the tasks it started on one manager."""

    # Taskward ids of tasks started here and not done -> the task create_task returned.
    live: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    retired: set[str] = field(default_factory=set)  # of `live`: deregistered by cleanup_task
    aliases: dict[str, str] = field(default_factory=dict)  # caller's task_id -> taskward id
    names: dict[str, str] = field(default_factory=dict)  # taskward id -> caller's task_id

    def shown(self, task_ids: list[str]) -> list[str]:
        """The ids open-webui callers know, without deregistered tasks."""
        retired, names = self.retired, self.names
        return [names.get(i, i) for i in task_ids if i not in retired]

    def forget(self, task_id: str, _task: asyncio.Task[Any]) -> None:
        self.live.pop(task_id, None)
        self.retired.discard(task_id)
        name = self.names.pop(task_id, None)
        if name is not None:
            self.aliases.pop(name, None)


# What `redis` names -> (its manager, the client or URL, held so an id() key stays unique).
_defaults: dict[tuple[str, object], tuple[TaskManager, Any]] = {}
# Per manager, wherever installed; an entry goes with its manager.
_registries: weakref.WeakKeyDictionary[TaskManager, _Registry] = weakref.WeakKeyDictionary()


def _key(redis: Any) -> tuple[str, object]:
    if redis is None or (isinstance(redis, str) and not redis):
        return ("local", None)
    if isinstance(redis, str):
        return ("url", redis)
    return ("client", id(redis))


def _new_manager(redis: Any) -> TaskManager:
    return TaskManager() if redis is None else TaskManager(redis=redis)


def get_default_manager(redis: Any = None) -> TaskManager:
    """The manager the functions here use for `redis`, created on first use.

    ``None`` (or ``""``) names the in-process default; a ``redis.asyncio``
    client or a URL names a manager bound to it with the default key prefix.
    A closed manager is replaced by a new one.
    """
    key = _key(redis)
    entry = _defaults.get(key)
    if entry is None or entry[0].closed:
        target = None if key[1] is None else redis
        entry = _defaults[key] = (_new_manager(target), target)
    return entry[0]


def set_default_manager(manager: TaskManager | None, redis: Any = None) -> TaskManager | None:
    """Use `manager` for `redis` (``None``: the in-process default); return the one replaced.

    ``None`` as `manager` removes the current one, so the next call creates a
    new default. The replaced manager is not closed: that is up to the caller.
    """
    if manager is not None:
        if not isinstance(manager, TaskManager):
            raise TypeError(f"manager must be a TaskManager, not {type(manager).__name__}")
        if manager.closed:
            raise ValueError("that TaskManager is closed")
    key = _key(redis)
    old = _defaults.pop(key, None)
    if manager is not None:
        _defaults[key] = (manager, None if key[1] is None else redis)
    return None if old is None else old[0]


async def aclose_default_managers() -> None:
    """Close every default manager, created here or set, and forget them.

    For app shutdown and between tests; each manager drains as its
    `TaskManager.aclose` does. The next call of any function here starts anew.
    """
    managers = list({id(m): m for m, _ in _defaults.values()}.values())
    _defaults.clear()
    results = await asyncio.gather(*(m.aclose() for m in managers), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _use(redis: Any) -> tuple[TaskManager, _Registry]:
    manager = get_default_manager(redis)
    registry = _registries.get(manager)
    if registry is None:
        registry = _registries[manager] = _Registry()
    return manager, registry


# -- creating ----------------------------------------------------------------------------


async def create_task(
    redis: Any,
    coroutine: Coroutine[Any, Any, Any],
    id: str | None = None,
    task_id: str | None = None,
) -> tuple[str, asyncio.Task[Any]]:
    """Run `coroutine` as a tracked task of item `id`; return ``(task_id, task)``.

    As in open-webui 0.12.4: `task_id` is a new uuid4 unless the caller passes
    one; a false `id` means no item. `task` is an `asyncio.Task` that follows
    the coroutine: awaiting it gives the coroutine's result or raises its
    exception, and cancelling it cancels the coroutine. The outcome is also
    recorded, so nobody has to await `task`: a failure nobody retrieves is
    logged at debug level, not as "Task exception was never retrieved".

    Raises `TypeError` for a non-coroutine and `ValueError` for an unusable
    `id` or `task_id`, or a `task_id` already in use here (open-webui would
    silently replace that task in its registry); the coroutine is then closed.
    """
    if not is_coroutine(coroutine):
        raise TypeError(f"a coroutine was expected, got {coroutine!r}")
    run = _Run(coroutine)
    try:
        manager, registry = _use(redis)
        if task_id:
            check_id(task_id, "task_id")
            if task_id in registry.aliases or task_id in registry.live:
                raise ValueError(f"task_id {task_id!r} is already in use")
        real_id = await _create(manager, run, id or None, _name_of(coroutine), task_id or None)
    except BaseException:
        coroutine.close()
        raise
    shown = real_id
    if task_id and real_id != task_id:
        registry.aliases[task_id] = real_id
        registry.names[real_id] = shown = task_id
    task = asyncio.get_running_loop().create_task(run.follow(), name=f"task-{shown}")
    task.add_done_callback(run.followed)
    task.add_done_callback(functools.partial(registry.forget, real_id))
    registry.live[real_id] = task
    return shown, task


async def _create(
    manager: TaskManager, run: _Run, item_id: str | None, name: str | None, task_id: str | None
) -> str:
    """The task under the caller's id where it is free, so every instance knows it by it.

    open-webui forgets a task when it ends and lets its id be used again; taskward
    keeps finished records for a while. An id held by a finished task is given
    to the new one here only, as an alias of a fresh id; one held by a running
    task is refused, as it would be by a second `create_task` here.
    """
    try:
        return await manager.create_task(run.capture(), item_id, name=name, task_id=task_id)
    except TaskIdInUse:
        assert task_id is not None  # only a chosen id can be in use
        holder = await manager.get_record(task_id)
        if holder is not None and holder.status is _RUNNING:
            raise
    return await manager.create_task(run.capture(), item_id, name=name)


def _name_of(coroutine: Coroutine[Any, Any, Any]) -> str | None:
    name = getattr(coroutine, "__qualname__", None)
    return name if isinstance(name, str) and name else None


class _Run:
    """Joins the manager's task running a coroutine to the task `create_task` returns.

    The manager's task (`runner`) records a failure instead of raising it;
    `capture` runs inside it, keeping the exception object, and `follow`
    (the returned task) ends as the coroutine did. The runner is learnt from
    inside because it may have finished by the time `TaskManager.create_task`
    returns. Tasks run their first steps in creation order, so by the first
    step of the returned task the runner has started, unless the manager
    cancelled it before it could (then `runner` stays None).
    """

    __slots__ = ("coroutine", "failure", "result", "runner")

    def __init__(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self.coroutine = coroutine
        self.runner: asyncio.Task[Any] | None = None
        self.failure: Exception | None = None
        self.result: Any = None

    async def capture(self) -> Any:
        self.runner = asyncio.current_task()
        try:
            self.result = await self.coroutine
        except Exception as exc:
            self.failure = exc
            raise
        return self.result

    async def follow(self) -> Any:
        if self.runner is None:
            raise asyncio.CancelledError  # cancelled by the manager before it ran
        # Cancelling this task while it awaits the runner cancels the runner too.
        await self.runner
        if self.failure is not None:
            raise self.failure
        return self.result  # the coroutine's own object, as an asyncio.Task gives it

    def followed(self, task: asyncio.Task[Any]) -> None:
        runner = self.runner
        if runner is None:
            self.coroutine.close()  # never started: no "never awaited" warning
        elif task.cancelled():
            if not runner.done():
                runner.cancel()  # this task was cancelled before its first step
        elif (exc := task.exception()) is not None:  # retrieved: it is on the record
            logger.debug("task %s failed", task.get_name(), exc_info=exc)


async def cleanup_task(redis: Any, task_id: str, id: str | None = None) -> None:
    """Deregister a task started here, without cancelling it.

    As in open-webui, where a task calls this on itself as it ends: from now
    on the listings, `has_active_tasks` and the stop functions no longer see
    it, though it runs to its end (its record shows it running until then).
    `id`, the item, is accepted for compatibility and not needed. Unknown ids,
    finished tasks and tasks of other instances are left alone.
    """
    if not _is_id(task_id):
        return
    _, registry = _use(redis)
    real_id = registry.aliases.get(task_id, task_id)
    if real_id in registry.live:
        registry.retired.add(real_id)


# -- listing ---------------------------------------------------------------------------


async def list_tasks(redis: Any) -> list[str]:
    """Ids of all running tasks, oldest first (with Redis: of every instance).

    As in open-webui 0.12.4; tasks deregistered by `cleanup_task` are left out.
    """
    manager, registry = _use(redis)
    task_ids: list[str] = []
    cursor: str | None = None
    while True:
        page = await manager.records(status=_RUNNING, limit=LIST_PAGE_SIZE, cursor=cursor)
        task_ids.extend(rec.task_id for rec in page.records)
        if page.cursor is None:
            break
        cursor = page.cursor
    task_ids.reverse()  # pages are newest first
    return registry.shown(task_ids)


async def list_task_ids_by_item_id(redis: Any, id: str) -> list[str]:
    """Ids of the item's running tasks, oldest first; ``[]`` for an unknown item."""
    manager, registry = _use(redis)
    return registry.shown(await _item_task_ids(manager, registry, id))


async def has_active_tasks(redis: Any, chat_id: str) -> bool:
    """Whether the item (a chat, a note) has running tasks, as in open-webui 0.12.4."""
    return bool(await _item_task_ids(*_use(redis), chat_id))


async def _item_task_ids(manager: TaskManager, registry: _Registry, item_id: str) -> list[str]:
    """Taskward ids of the item's running tasks that are still registered."""
    if not item_id or not _is_id(item_id):
        return []
    task_ids = await manager.list_task_ids_by_item_id(item_id)
    retired = registry.retired
    return [i for i in task_ids if i not in retired] if retired else task_ids


# -- stopping ----------------------------------------------------------------------------


async def stop_task(redis: Any, task_id: str) -> StopReply:
    """Stop a task, wherever it runs, and wait for the outcome.

    Answers with open-webui 0.12.4's in-process messages, with or without Redis:

    - ``{"status": True, "message": "Task <id> successfully stopped."}``: cancelled.
    - ``{"status": True, "message": "Task <id> successfully cancelled."}``: it
      finished otherwise while being stopped (swallowed the cancellation, or
      raised another exception, which open-webui would raise out of here).
    - ``{"status": True, "message": "Cancellation requested for <id>."}``: not
      confirmed within the manager's ``stop_timeout``; the request stays and
      will be honoured (open-webui would wait without limit).
    - ``{"status": False, "message": "Task with ID <id> not found."}``: unknown,
      already finished, or deregistered by `cleanup_task`.

    With Redis, open-webui 0.12.4 answers ``{"status": True, "message": "Task
    <id> stopped."}`` for any id without knowing the outcome (0.6:
    ``"Stop signal sent for <id>"``). As there, once a task started here is
    stopped, the task `create_task` returned for it is done.
    """
    if not _is_id(task_id):
        return _not_found(task_id)
    manager, registry = _use(redis)
    return await _stop(manager, registry, task_id, registry.aliases.get(task_id, task_id))


async def stop_item_tasks(redis: Any, item_id: str) -> StopReply:
    """Stop all running tasks of an item, all at once, and wait for them.

    As in open-webui 0.12.4: ``{"status": True, "message": "No tasks found for
    item <id>."}`` when there is none, else ``{"status": True, "message": "All
    tasks for item <id> stopped."}`` once each was stopped (as far as
    `stop_task` could; a task that finished meanwhile is no failure).
    """
    manager, registry = _use(redis)
    task_ids = await _item_task_ids(manager, registry, item_id)
    if not task_ids:
        return {"status": True, "message": f"No tasks found for item {item_id}."}
    names = registry.names
    await asyncio.gather(*(_stop(manager, registry, names.get(i, i), i) for i in task_ids))
    return {"status": True, "message": f"All tasks for item {item_id} stopped."}


async def _stop(manager: TaskManager, registry: _Registry, shown: str, task_id: str) -> StopReply:
    if task_id in registry.retired:
        return _not_found(shown)
    rec = await manager.get_record(task_id)
    if rec is None or rec.status is not _RUNNING:
        return _not_found(shown)  # open-webui forgets a task as soon as it ends
    result = await manager.stop_task(task_id)
    follower = registry.live.get(task_id)
    if follower is not None and result.outcome in _ENDED:
        # Let the task create_task returned settle too: a turn after the runner
        # (bounded: a task abandoned as lost at shutdown may still be running).
        await asyncio.wait((follower,), timeout=manager.stop_timeout)
    match result.outcome:
        case StopOutcome.CANCELLED:
            return {"status": True, "message": f"Task {shown} successfully stopped."}
        case StopOutcome.ALREADY_FINISHED:
            return {"status": True, "message": f"Task {shown} successfully cancelled."}
        case StopOutcome.PENDING:
            return {"status": True, "message": f"Cancellation requested for {shown}."}
    return _not_found(shown)


def _not_found(task_id: object) -> StopReply:
    return {"status": False, "message": f"Task with ID {task_id} not found."}


def _is_id(value: object) -> bool:
    try:
        check_id(value, "id")
    except (TypeError, ValueError):
        return False
    return True


# -- what open-webui starts with the app ---------------------------------------------------


async def redis_task_command_listener(app: Any) -> None:
    """Start the manager for ``app.state.redis`` and run until cancelled.

    open-webui (0.6 to 0.12.4) starts this at startup when Redis is configured,
    as ``asyncio.create_task(redis_task_command_listener(app))``, and cancels it
    at shutdown; it subscribes to the stop commands of other instances. The
    manager does that itself once started, so this starts it (retrying with a
    growing wait while the store is unreachable, as open-webui's listener
    does) and waits. Await `aclose_default_managers` at shutdown to drain and
    record tasks.
    """
    await _start_and_wait(app)


async def redis_task_heartbeat(app: Any) -> None:
    """Start the manager for ``app.state.redis`` and run until cancelled.

    open-webui 0.12.4 starts this next to `redis_task_command_listener` when
    ``REDIS_TASK_TTL > 0``, to refresh a per-task key every ``REDIS_TASK_TTL /
    4`` seconds so the tasks of a dead instance expire. The manager keeps its
    own instance heartbeat and marks a dead instance's tasks lost, so this
    only makes sure it is started.
    """
    await _start_and_wait(app)


async def _start_and_wait(app: Any) -> None:
    redis = getattr(app.state, "redis", None)
    wait = START_RETRY_INTERVAL
    while True:
        try:
            await get_default_manager(redis).start()
            break
        except Exception as exc:  # noqa: BLE001 - retried; first use would start it too
            logger.warning("could not start the task manager (%s); retrying in %gs", exc, wait)
        await asyncio.sleep(wait)
        wait = min(wait * 2, START_RETRY_MAX_INTERVAL)
    await asyncio.get_running_loop().create_future()  # never set: ends when cancelled
