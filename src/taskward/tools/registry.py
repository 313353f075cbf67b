"""`ToolRegistry`: the tools a model may call, their schemas, and the call itself.

``await registry.call(name, arguments, context)`` always answers a string for
the model: the tool's result when it beats its timeout, a task envelope when it
goes on in the background (the model polls it with `check_task`), or a compact
JSON error it can act on (an unknown tool, arguments that are not JSON or do
not fit the schema, a tool that raised). Nothing a model sends raises into the
tool loop. Calls run through `TaskManager.execute`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any, overload

from .._context import current_task_id
from .context import ToolContext
from .definition import Tool, ToolArgumentsError, ToolFunction, define
from .envelopes import rejected_envelope
from .schemas import FORMATS, tool_schema
from .task_tools import TASK_TOOLS

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator, Mapping

__all__ = ["ToolRegistry", "default_registry", "tool"]


class ToolRegistry:
    """Tools by name, with the task tools (`check_task`, `list_tasks`, `stop_task`)
    unless ``task_tools=False``."""

    def __init__(self, *, task_tools: bool = True) -> None:
        if not isinstance(task_tools, bool):
            raise TypeError(f"task_tools must be a bool, not {type(task_tools).__name__}")
        self._tools: dict[str, Tool] = {}
        if task_tools:
            for function in TASK_TOOLS:
                self.add(function, no_background=True)

    # -- defining --------------------------------------------------------------------

    def add(
        self,
        function: ToolFunction,
        *,
        name: str | None = None,
        description: str | None = None,
        no_background: bool = False,
        timeout: float | None = None,
    ) -> Tool:
        """Register an `async def` function as a tool (see `Tool`); a taken name is a ValueError."""
        defined = define(
            function,
            name=name,
            description=description,
            no_background=no_background,
            timeout=timeout,
        )
        if defined.name in self._tools:
            raise ValueError(f"a tool named {defined.name!r} is already registered")
        self._tools[defined.name] = defined
        return defined

    @overload
    def tool(self, function: ToolFunction) -> ToolFunction: ...

    @overload
    def tool(
        self,
        *,
        name: str | None = None,
        description: str | None = None,
        no_background: bool = False,
        timeout: float | None = None,
    ) -> Callable[[ToolFunction], ToolFunction]: ...

    def tool(
        self,
        function: ToolFunction | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        no_background: bool = False,
        timeout: float | None = None,
    ) -> ToolFunction | Callable[[ToolFunction], ToolFunction]:
        """Decorator: ``@registry.tool`` or ``@registry.tool(timeout=30)``; the function
        is registered and returned unchanged."""

        def register(fn: ToolFunction) -> ToolFunction:
            self.add(
                fn, name=name, description=description, no_background=no_background, timeout=timeout
            )
            return fn

        return register if function is None else register(function)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    @property
    def names(self) -> list[str]:
        """Tool names, in the order they were registered."""
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    # -- describing ------------------------------------------------------------------

    def schemas(self, format: str = "openai") -> list[dict[str, Any]]:
        """Every tool as the API named by `format` takes it: ``openai`` (Chat Completions
        `tools`), ``openai-responses``, ``anthropic`` or ``mcp``. Fresh dicts each time."""
        if format not in FORMATS:
            raise ValueError(
                f"unknown schema format {format!r}; the formats are {', '.join(FORMATS)}"
            )
        return [tool_schema(t, format) for t in self._tools.values()]

    # -- calling -----------------------------------------------------------------------

    async def call(
        self, name: str, arguments: str | Mapping[str, Any] | None, context: ToolContext
    ) -> str:
        """Run one tool call for a model and answer what it should read.

        `arguments` is a dict or the JSON text the model produced (empty: none).
        The call runs as a task owned by ``context.caller`` and named after the
        tool, unless the tool is `no_background` (then it is awaited inline).
        """
        if not isinstance(context, ToolContext):
            raise TypeError(f"context must be a ToolContext, not {type(context).__name__}")
        found = self._tools.get(name)
        if found is None:
            return rejected_envelope(
                name,
                "unknown_tool",
                f"no tool named {name!r}; call one of the tools listed",
                tools=self.names,
            )
        try:
            kwargs = found.bind(_parse_arguments(arguments))
        except ToolArgumentsError as exc:
            message = f"fix the arguments listed in fields and call {found.name} again"
            return rejected_envelope(found.name, "invalid_arguments", message, fields=exc.fields)
        except (ValueError, TypeError) as exc:
            return rejected_envelope(found.name, "invalid_json", str(exc))
        manager, user_id = context.manager, context.caller.user_id
        if found.no_background:
            inline = context if context.task_id is None else replace(context, task_id=None)
            return await manager.execute(
                found.coroutine(kwargs, inline),
                found.name,
                user_id,
                context.channel_id,
                context.platform,
                background=False,
            )
        coro = (
            found.coroutine(kwargs, context)
            if found.context_parameter is None
            else _in_task(found, kwargs, context)
        )
        return await manager.execute(
            coro, found.name, user_id, context.channel_id, context.platform, timeout=found.timeout
        )


def _in_task(tool: Tool, kwargs: dict[str, Any], context: ToolContext) -> Coroutine[Any, Any, Any]:
    """The call as its task runs it: the context it gets carries the task's id."""

    async def run() -> Any:
        return await tool.coroutine(kwargs, replace(context, task_id=current_task_id()))

    return run()


def _parse_arguments(arguments: object) -> dict[str, Any]:
    """A model's arguments as a dict; ValueError (not JSON) or TypeError (not an object)."""
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        if not arguments.strip():
            return {}
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"the arguments are not valid JSON ({exc.msg} at line {exc.lineno} "
                f"column {exc.colno}); send one JSON object"
            ) from None
    else:
        parsed = arguments
    if not isinstance(parsed, dict):
        raise TypeError(f"the arguments must be a JSON object, not {type(parsed).__name__}")
    return dict(parsed)


#: The registry `taskward.tools.tool` registers into when given none.
default_registry = ToolRegistry()


@overload
def tool(function: ToolFunction) -> ToolFunction: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    no_background: bool = False,
    timeout: float | None = None,
    registry: ToolRegistry | None = None,
) -> Callable[[ToolFunction], ToolFunction]: ...


def tool(
    function: ToolFunction | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    no_background: bool = False,
    timeout: float | None = None,
    registry: ToolRegistry | None = None,
) -> ToolFunction | Callable[[ToolFunction], ToolFunction]:
    """Decorator: register a tool in `registry` (default: `default_registry`).

    ``@tool``, or ``@tool(name=..., description=..., no_background=True, timeout=30,
    registry=mine)``; the function is returned unchanged.
    """
    target = default_registry if registry is None else registry
    if not isinstance(target, ToolRegistry):
        raise TypeError(f"registry must be a ToolRegistry, not {type(target).__name__}")
    decorate = target.tool(
        name=name, description=description, no_background=no_background, timeout=timeout
    )
    return decorate if function is None else decorate(function)
