"""How one instance's parts are put together: who gets which object.

Each part owns its state; this is the one place that knows them all. The
`TaskManager` builds its `Parts` here and keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._delivery import Deliverer, Redirector
from ._housekeeping import Housekeeper
from ._hub import BusEndpoint, EventHub
from ._reads import Reader
from ._stopping import Stopper
from ._sync import Flusher
from ._table import LocalTable
from .stores.base import InProcessStore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence
    from typing import Any

    from ._delivery import PlatformAdapter
    from ._encoding import ValueEncoder
    from ._live import Live
    from ._records import TaskEvent
    from .bus.base import Bus
    from .stores.base import Store

__all__ = ["RECENT_LIMIT", "Parts", "assemble"]

# Final records of tasks run here that an instance on a remote store keeps for reads.
RECENT_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Parts:
    """The parts of one instance."""

    flusher: Flusher
    hub: EventHub
    table: LocalTable
    keeper: Housekeeper
    reader: Reader
    stopper: Stopper
    handlers: BusEndpoint
    deliverer: Deliverer
    redirector: Redirector


def assemble(
    store: Store,
    bus: Bus,
    *,
    instance_id: str,
    encoder: ValueEncoder,
    encode_events: Callable[[Sequence[TaskEvent]], str | None] | None,
    alone: bool,
    ready: Callable[[], Awaitable[None]],
    stop_timeout: float,
    heartbeat_interval: float,
    liveness_ttl: float,
    redirect_adapters: Mapping[str, PlatformAdapter] | None,
    delivery_timeout: float,
    delivery_attempt_timeout: float,
) -> Parts:
    """The parts of an instance on `store` and `bus`; `alone`: nobody else can hear of
    its tasks; `ready()` starts the instance if it is not yet."""
    in_process = isinstance(store, InProcessStore)
    flusher = Flusher(store, bus, encode_events=encode_events, in_process=in_process)
    hub = EventHub(queue_event=flusher.add_event, has_peers=bus.has_peers, alone=alone)
    table = LocalTable(
        instance_id=instance_id,
        writes=flusher,
        hub=hub,
        encoder=encoder,
        keep_recent=0 if in_process else min(store.retention.max_finished, RECENT_LIMIT),
        result_ttl=store.retention.result_ttl,
    )
    keeper = Housekeeper(
        instance_id=instance_id,
        table=table,
        store=store,
        bus=bus,
        flusher=flusher,
        hub=hub,
        has_peers=bus.has_peers,
        heartbeat_interval=heartbeat_interval,
        liveness_ttl=liveness_ttl,
    )
    reader = Reader(
        table=table,
        store=store,
        hub=hub,
        ready=ready,
        unavailable=keeper.set_disconnected,
    )
    stopper = Stopper(
        table=table,
        reader=reader,
        store=store,
        bus=bus,
        hub=hub,
        flusher=flusher,
        keeper=keeper,
        stop_timeout=stop_timeout,
        remote_store=not in_process,
    )
    deliverer = Deliverer(
        store,
        adapters=redirect_adapters,
        delivery_timeout=delivery_timeout,
        attempt_timeout=delivery_attempt_timeout,
    )

    def written(rows: list[Live]) -> None:
        table.forget(rows)
        if reader.redirects_among(rows):  # their deliveries were enqueued by this write
            deliverer.kick()

    flusher.bind(written=written, unavailable=keeper.set_disconnected, unwritable=table.unwritable)

    def on_command(command: dict[str, Any]) -> None:
        if command.get("op") == "redirect":  # a redirect set elsewhere on a task of ours
            reader.note_redirect(str(command.get("task_id")))
        else:
            stopper.on_command(command)

    handlers = BusEndpoint(hub, on_command, keeper.reconcile_stops)
    redirector = Redirector(
        instance_id=instance_id,
        table=table,
        reader=reader,
        store=store,
        bus=bus,
        flusher=flusher,
        deliverer=deliverer,
    )
    return Parts(flusher, hub, table, keeper, reader, stopper, handlers, deliverer, redirector)
