"""Every Redis key and channel name taskward uses, built in this one place.

All names of one deployment live under a single Redis Cluster hash tag,
``{<prefix>}``, so every key of a prefix maps to the same slot: the Lua scripts
and pipelines of `RedisStore` touch many keys at once and work unchanged on
Cluster. The trade-off is that one prefix is served by one shard; to spread a
very large fleet over several shards, give groups of services their own prefix.

Layout (``P`` is ``{<prefix>}``, e.g. ``{taskward}``; ids are task, user, item
or instance ids):

=============================  ===========  =============================================
Key                            Type         Holds
=============================  ===========  =============================================
``P:task:<task_id>``           hash         one task record (short field names); expires
                                            ``result_ttl`` after the task finished
``P:out:<task_id>``            sorted set   output chunks scored by seq, capped at
                                            ``max_output``; expires with the record
``P:idx:all``                  sorted set   every task id, scored by creation time
``P:idx:user:<user_id>``       sorted set   the user's task ids, by creation time
``P:idx:item:<item_id>``       sorted set   the item's task ids, by creation time
``P:idx:status:<status>``      sorted set   task ids with that status, by creation time
``P:finished``                 sorted set   ``"<task_id> <status> <user_id> <item_id>"``
                                            of finished tasks, scored by finish time:
                                            drives retention (age and count)
``P:inst:<instance_id>:alive`` string       present while the instance heartbeats (PX)
``P:inst:<instance_id>:tasks`` set          ids of the instance's running tasks
``P:inst:<instance_id>:stops`` set          ids of its running tasks with a stop request
``P:instances``                set          instance ids that may own running tasks
``P:heartbeats``               hash         instance id -> Unix time of its last heartbeat
``P:lock:reaper``              string       the reaper's lock: its token, with a PX expiry
``P:deliveries``               sorted set   ids of pending redirect deliveries, scored by the
                                            Unix time they are due (a claim moves it to the
                                            end of its lease)
``P:deliveries:data``          hash         delivery id -> the delivery as JSON (target, what
                                            to send, attempts, lease token)
``P:deliveries:seq``           string       counter that numbers delivery ids
``P:cmd:<instance_id>``        channel      commands to one instance (pub/sub)
``P:events``                   channel      events for every instance (pub/sub)
=============================  ===========  =============================================

Why no caller id can name an internal key: ids passed here have been checked by
`taskward._ids.check_id` (no whitespace, braces, quotes, backslashes or glob
characters), every variable part sits after a kind prefix that is unique and
not a prefix of another kind (``task:``, ``out:``, ``idx:user:``, ...), and the
fixed names (``idx:all``, ``finished``, ``instances``, ``lock:reaper``,
``deliveries...``) do not
start with any kind prefix. Instance keys end in a fixed suffix, so
``inst:<a>:tasks`` can never equal ``inst:<b>:alive`` or ``inst:<b>:stops``.
The methods here do not check ids again: they run for every record written.

The Lua scripts build keys of records they discover server-side (when
trimming or reaping) by concatenating the kind prefixes of `Keys.script_layout`
with an id; those prefixes come from here too.
"""

from __future__ import annotations

from .._ids import check_id

__all__ = ["DEFAULT_PREFIX", "MAX_PREFIX_LENGTH", "Keys"]

DEFAULT_PREFIX = "taskward"
MAX_PREFIX_LENGTH = 64


class Keys:
    """Key and channel names for one prefix. Cheap to build, immutable by convention."""

    __slots__ = (
        "all",
        "base",
        "deliveries",
        "delivery_data",
        "delivery_seq",
        "events",
        "finished",
        "heartbeats",
        "instance_prefix",
        "instances",
        "item_prefix",
        "output_prefix",
        "pattern",
        "prefix",
        "reaper_lock",
        "status_prefix",
        "task_prefix",
        "user_prefix",
    )

    ALIVE_SUFFIX = ":alive"
    TASKS_SUFFIX = ":tasks"
    STOPS_SUFFIX = ":stops"

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        check_id(prefix, "prefix")
        if len(prefix) > MAX_PREFIX_LENGTH:
            raise ValueError(
                f"prefix is {len(prefix)} characters long; the limit is {MAX_PREFIX_LENGTH}"
            )
        base = "{" + prefix + "}:"
        self.prefix = prefix
        self.base = base
        #: glob pattern matching every key of this prefix (for SCAN-based cleanup)
        self.pattern = base + "*"
        self.task_prefix = base + "task:"
        self.output_prefix = base + "out:"
        self.user_prefix = base + "idx:user:"
        self.item_prefix = base + "idx:item:"
        self.status_prefix = base + "idx:status:"
        self.instance_prefix = base + "inst:"
        self.all = base + "idx:all"
        self.finished = base + "finished"
        self.instances = base + "instances"
        self.heartbeats = base + "heartbeats"
        self.reaper_lock = base + "lock:reaper"
        self.events = base + "events"
        self.deliveries = base + "deliveries"
        self.delivery_data = base + "deliveries:data"
        self.delivery_seq = base + "deliveries:seq"

    def __repr__(self) -> str:
        return f"Keys({self.prefix!r})"

    def task(self, task_id: str) -> str:
        return self.task_prefix + task_id

    def output(self, task_id: str) -> str:
        return self.output_prefix + task_id

    def user_index(self, user_id: str) -> str:
        return self.user_prefix + user_id

    def item_index(self, item_id: str) -> str:
        return self.item_prefix + item_id

    def status_index(self, status: str) -> str:
        return self.status_prefix + status

    def alive(self, instance_id: str) -> str:
        return self.instance_prefix + instance_id + self.ALIVE_SUFFIX

    def instance_tasks(self, instance_id: str) -> str:
        return self.instance_prefix + instance_id + self.TASKS_SUFFIX

    def instance_stops(self, instance_id: str) -> str:
        return self.instance_prefix + instance_id + self.STOPS_SUFFIX

    def command_channel(self, instance_id: str) -> str:
        return self.base + "cmd:" + instance_id

    def delivery_keys(self) -> list[str]:
        """The delivery queue's keys, in the order the scripts take them: queue, data, seq."""
        return [self.deliveries, self.delivery_data, self.delivery_seq]

    def script_layout(self) -> list[str]:
        """The kind prefixes and suffixes the Lua scripts concatenate ids with, in order.

        ``task, out, idx:user, idx:item, idx:status, inst, :alive, :tasks, :stops``
        (see `taskward.stores._redis_scripts`).
        """
        return [
            self.task_prefix,
            self.output_prefix,
            self.user_prefix,
            self.item_prefix,
            self.status_prefix,
            self.instance_prefix,
            self.ALIVE_SUFFIX,
            self.TASKS_SUFFIX,
            self.STOPS_SUFFIX,
        ]
