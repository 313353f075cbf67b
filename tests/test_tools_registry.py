"""ToolRegistry and @tool: definitions read from functions, and calls the way a model makes them."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Annotated, Any, Literal

import pydantic
import pytest

from taskward import Caller, TaskManager, TaskStatus, current_task_id
from taskward.tools import Tool, ToolContext, ToolRegistry, default_registry, tool
from taskward.tools.definition import parse_docstring

ANA = Caller("ana")


@pytest.fixture
def manager_defaults(manager_defaults: dict[str, Any]) -> dict[str, Any]:
    return {**manager_defaults, "timeout": 0.3, "stop_timeout": 1.0}


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry()


@pytest.fixture
def ctx(tm: TaskManager) -> ToolContext:
    return ToolContext(tm, ANA, channel_id="C1", platform="slack")


def parse(text: str) -> dict[str, Any]:
    data = json.loads(text)
    assert isinstance(data, dict)
    assert text == json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return data


class Address(pydantic.BaseModel):
    city: str
    zip_code: str | None = None


async def report(
    pages: int,
    lang: Literal["en", "fr"] = "en",
    tags: list[str] | None = None,
    *,
    ctx: ToolContext,
) -> dict[str, Any]:
    """Write a report about the sources.

    It can take a while.

    Args:
        pages: How many pages
            to write.
        lang (str): The language.
        tags: Labels to put on it.

    Returns:
        The report.
    """
    ctx.progress(0.5, "halfway")
    return {"pages": pages, "lang": lang, "tags": tags, "task_id": ctx.task_id}


# -- definitions ----------------------------------------------------------------------------


def test_a_tool_is_read_from_its_hints_and_docstring(registry: ToolRegistry) -> None:
    defined = registry.add(report)
    assert isinstance(defined, Tool)
    assert defined.name == "report"
    assert defined.description == "Write a report about the sources.\n\nIt can take a while."
    assert defined.context_parameter == "ctx"
    assert defined.parameters == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "pages": {"type": "integer", "description": "How many pages to write."},
            "lang": {
                "enum": ["en", "fr"],
                "type": "string",
                "default": "en",
                "description": "The language.",
            },
            "tags": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                "default": None,
                "description": "Labels to put on it.",
            },
        },
        "required": ["pages"],
    }


def test_sphinx_docstrings_and_annotated_descriptions() -> None:
    async def lookup(
        city: str, limit: Annotated[int, pydantic.Field(description="from Annotated", ge=1)] = 3
    ) -> str:
        """Find places.

        :param city: The city,
            by name.
        :param limit: ignored: Annotated wins.
        :returns: places
        """
        return city

    defined = ToolRegistry(task_tools=False).add(lookup)
    assert defined.description == "Find places."
    props = defined.parameters["properties"]
    assert props["city"]["description"] == "The city, by name."
    assert props["limit"] == {
        "type": "integer",
        "minimum": 1,
        "default": 3,
        "description": "from Annotated",
    }


def test_parse_docstring_edge_cases() -> None:
    assert parse_docstring(None) == ("", {})
    assert parse_docstring("Only text.") == ("Only text.", {})
    text, params = parse_docstring("Do it.\n\nArgs:\n    *items: the items\n    **opts: options\n")
    assert (text, params) == ("Do it.", {"items": "the items", "opts": "options"})


def test_name_description_and_options_can_be_given(registry: ToolRegistry) -> None:
    async def f(x: int) -> int:
        return x

    defined = registry.add(
        f, name="double-it", description="Double.", no_background=True, timeout=2
    )
    assert (defined.name, defined.description, defined.no_background, defined.timeout) == (
        "double-it",
        "Double.",
        True,
        2.0,
    )
    assert "double-it" in registry
    assert registry.get("double-it") is defined
    assert registry.get("f") is None


def test_the_task_tools_are_registered_unless_excluded() -> None:
    assert ToolRegistry().names == ["check_task", "list_tasks", "stop_task", "redirect_task"]
    assert len(ToolRegistry()) == 4
    assert ToolRegistry(task_tools=False).names == []
    assert [t.name for t in ToolRegistry()] == [
        "check_task",
        "list_tasks",
        "stop_task",
        "redirect_task",
    ]
    assert all(t.no_background for t in ToolRegistry())
    with pytest.raises(TypeError, match="task_tools"):
        ToolRegistry(task_tools="no")  # type: ignore[arg-type]


def test_bad_definitions_are_refused(registry: ToolRegistry) -> None:
    def sync(x: int) -> int:
        return x

    async def untyped(x) -> None:  # type: ignore[no-untyped-def]
        return None

    async def star(*args: int) -> None:
        return None

    async def fine(x: int) -> None:
        return None

    with pytest.raises(TypeError, match="async function"):
        registry.add(sync)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a type annotation"):
        registry.add(untyped)
    with pytest.raises(TypeError, match="plain or keyword-only"):
        registry.add(star)
    for bad in ("", "has space", "x" * 65, "dots.not.allowed"):
        with pytest.raises(ValueError, match="tool name"):
            registry.add(fine, name=bad)
    with pytest.raises(ValueError, match="timeout"):
        registry.add(fine, timeout=-1)
    with pytest.raises(TypeError, match="no_background"):
        registry.add(fine, no_background="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="description"):
        registry.add(fine, description=3)  # type: ignore[arg-type]
    registry.add(fine)
    with pytest.raises(ValueError, match="already registered"):
        registry.add(fine)


def test_hints_that_do_not_resolve_are_a_clear_error(registry: ToolRegistry) -> None:
    async def f(x: NotDefinedAnywhere) -> None:  # type: ignore[name-defined]  # noqa: F821
        return None

    with pytest.raises(TypeError, match="do not resolve"):
        registry.add(f)


def test_the_decorators(registry: ToolRegistry) -> None:
    @registry.tool
    async def plain(x: int) -> int:
        return x

    @registry.tool(timeout=5, no_background=True)
    async def configured(x: int) -> int:
        return x

    mine = ToolRegistry(task_tools=False)

    @tool(registry=mine, name="into_mine")
    async def elsewhere(x: int) -> int:
        return x

    assert registry.names[-2:] == ["plain", "configured"]
    assert registry.get("configured") is not None
    assert registry.get("configured").timeout == 5.0  # type: ignore[union-attr]
    assert mine.names == ["into_mine"]
    assert "into_mine" not in default_registry
    with pytest.raises(TypeError, match="ToolRegistry"):
        tool(registry=object())  # type: ignore[call-overload]


def test_module_level_tool_registers_into_the_default_registry() -> None:
    name = f"t_{uuid.uuid4().hex[:8]}"

    async def f(x: int) -> int:
        return x

    assert tool(name=name)(f) is f
    assert default_registry.get(name) is not None
    assert "check_task" in default_registry


# -- calls -------------------------------------------------------------------------------


async def test_a_quick_call_answers_inline(registry: ToolRegistry, ctx: ToolContext) -> None:
    registry.add(report)
    out = parse(await registry.call("report", '{"pages": 2}', ctx))
    assert out["pages"] == 2 and out["lang"] == "en" and out["tags"] is None
    # It ran as a task named after the tool, owned by the caller, on the context's channel.
    task_id = out["task_id"]
    assert isinstance(task_id, str)
    rec = await ctx.manager.get_record(task_id, caller=ANA)
    assert rec is not None
    assert (rec.name, rec.user_id, rec.channel_id, rec.platform) == ("report", "ana", "C1", "slack")
    assert (rec.status, rec.progress, rec.progress_message) == (
        TaskStatus.COMPLETED,
        0.5,
        "halfway",
    )


async def test_a_str_result_is_returned_as_it_is(registry: ToolRegistry, ctx: ToolContext) -> None:
    @registry.tool
    async def hello(name: str) -> str:
        return f"hello {name}"

    assert await registry.call("hello", {"name": "bo"}, ctx) == "hello bo"


async def test_a_slow_call_goes_on_in_the_background(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    release = asyncio.Event()

    @registry.tool(timeout=0.05)
    async def slow(ctx: ToolContext) -> str:
        await release.wait()
        return f"done in {ctx.task_id}"

    out = parse(await registry.call("slow", "{}", ctx))
    assert out["status"] == "running" and out["tool"] == "slow"
    assert out["poll_after_s"] == 1
    assert "check_task" in out["message"]
    release.set()
    assert await ctx.manager.result(out["task_id"], 5, caller=ANA) == f"done in {out['task_id']}"


async def test_the_tool_timeout_overrides_the_managers(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    @registry.tool(timeout=2.0)
    async def patient() -> str:
        await asyncio.sleep(0.5)  # longer than the manager's 0.3 s
        return "waited for"

    assert await registry.call("patient", None, ctx) == "waited for"


async def test_no_background_tools_run_inline_without_a_task(
    registry: ToolRegistry, tm: TaskManager
) -> None:
    seen: list[tuple[str | None, str | None]] = []

    @registry.tool(no_background=True)
    async def inline(ctx: ToolContext) -> str:
        await asyncio.sleep(0.5)  # past the manager's timeout: still awaited
        seen.append((ctx.task_id, current_task_id()))
        return "inline"

    context = ToolContext(tm, ANA, task_id="given-by-the-app")
    assert await registry.call("inline", "", context) == "inline"
    assert seen == [(None, None)]
    page = await tm.records(caller=ANA)
    assert page.records == []


async def test_unknown_tools_are_rejected_with_the_names(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    out = parse(await registry.call("nope", "{}", ctx))
    assert out == {
        "status": "rejected",
        "tool": "nope",
        "error": {
            "type": "unknown_tool",
            "message": "no tool named 'nope'; call one of the tools listed",
            "tools": ["check_task", "list_tasks", "stop_task", "redirect_task"],
        },
    }


@pytest.mark.parametrize(
    ("arguments", "kind", "words"),
    [
        ('{"pages": ', "invalid_json", "not valid JSON"),
        ("[1, 2]", "invalid_json", "must be a JSON object, not list"),
        ("null", "invalid_json", "must be a JSON object, not NoneType"),
        (42, "invalid_json", "must be a JSON object, not int"),
    ],
)
async def test_arguments_that_are_not_a_json_object_are_rejected(
    registry: ToolRegistry, ctx: ToolContext, arguments: Any, kind: str, words: str
) -> None:
    registry.add(report)
    out = parse(await registry.call("report", arguments, ctx))
    assert out["status"] == "rejected" and out["tool"] == "report"
    assert out["error"]["type"] == kind
    assert words in out["error"]["message"]
    assert (await ctx.manager.records(caller=ANA)).records == []


async def test_invalid_arguments_say_which_field_and_why(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    registry.add(report)
    out = parse(await registry.call("report", '{"pages": "many", "lang": "de", "x": 1}', ctx))
    assert out["error"]["type"] == "invalid_arguments"
    assert "call report again" in out["error"]["message"]
    fields = {f["field"]: f["problem"] for f in out["error"]["fields"]}
    assert set(fields) == {"pages", "lang", "x"}
    assert "valid integer" in fields["pages"]
    assert "'en' or 'fr'" in fields["lang"]
    assert "Extra inputs" in fields["x"]
    missing = parse(await registry.call("report", "{}", ctx))
    assert missing["error"]["fields"] == [{"field": "pages", "problem": "Field required"}]


async def test_nested_models_are_validated_and_handed_over(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    @registry.tool
    async def ship(to: Address) -> str:
        assert isinstance(to, Address)
        return to.city

    assert await registry.call("ship", {"to": {"city": "Lyon"}}, ctx) == "Lyon"
    out = parse(await registry.call("ship", {"to": {}}, ctx))
    assert out["error"]["fields"] == [{"field": "to.city", "problem": "Field required"}]


async def test_null_for_an_argument_with_a_default_means_the_default(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    @registry.tool
    async def count(n: int = 7, label: str | None = "x") -> str:
        return f"{n} {label}"

    assert registry.get("count").null_means_default == frozenset({"n"})  # type: ignore[union-attr]
    assert await registry.call("count", {"n": None}, ctx) == "7 x"
    # A type that takes None takes a null as a value.
    assert await registry.call("count", {"label": None}, ctx) == "7 None"


async def test_a_tool_that_raises_gives_an_error_envelope(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    @registry.tool
    async def broken() -> None:
        raise RuntimeError("tool broke")

    @registry.tool(no_background=True)
    async def broken_inline() -> None:
        raise KeyError("missing")

    out = parse(await registry.call("broken", "", ctx))
    assert out["status"] == "failed" and out["tool"] == "broken"
    assert out["error"] == {"type": "RuntimeError", "message": "tool broke"}
    inline = parse(await registry.call("broken_inline", "", ctx))
    assert inline == {
        "status": "failed",
        "tool": "broken_inline",
        "error": {"type": "KeyError", "message": "'missing'"},
    }


async def test_the_context_is_checked(registry: ToolRegistry, tm: TaskManager) -> None:
    with pytest.raises(TypeError, match="ToolContext"):
        await registry.call("check_task", "{}", object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Caller"):
        ToolContext(tm, "ana")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="channel_id"):
        ToolContext(tm, ANA, channel_id=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="platform"):
        ToolContext(tm, ANA, platform=None)  # type: ignore[arg-type]


async def test_context_emit_goes_to_the_tasks_output(
    registry: ToolRegistry, ctx: ToolContext
) -> None:
    @registry.tool
    async def chatty(ctx: ToolContext) -> str:
        ctx.emit("line one")
        ctx.emit({"n": 2})
        return ctx.task_id or ""

    task_id = await registry.call("chatty", "", ctx)
    chunks = await ctx.manager.read_output(task_id, caller=ANA)
    assert [c.data for c in chunks] == ["line one", '{"n":2}']
