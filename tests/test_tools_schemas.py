"""Tool schemas for OpenAI (Chat Completions, Responses), Anthropic and MCP, checked
against the SDKs' own types, and OpenAI strict mode where the schema allows it."""

from __future__ import annotations

from typing import Annotated, Any

import jsonschema
import pydantic
import pytest
from anthropic.types import ToolParam
from mcp.types import Tool as MCPTool
from openai.types.chat import ChatCompletionToolParam
from openai.types.responses import FunctionToolParam

from taskward.tools import FORMATS, ToolRegistry
from taskward.tools.schemas import STRICT_KEYWORDS, strict_schema


class Address(pydantic.BaseModel):
    city: str = pydantic.Field(description="The city")
    zip_code: str | None = None


class Loose(pydantic.BaseModel):
    city: str
    floor: int = 0


async def deliver(to: Address, note: str | None = None, copies: int = 1) -> str:
    """Deliver a parcel.

    Args:
        to: Where to.
        note: For the courier.
        copies: How many.
    """
    return to.city


async def free_form(data: dict[str, int]) -> str:
    return "ok"


async def limited(name: Annotated[str, pydantic.Field(max_length=10)]) -> str:
    return name


async def keeps_a_value(level: int | None = 5) -> str:
    return "ok"


async def nested_default(to: Loose) -> str:
    return "ok"


@pytest.fixture
def registry() -> ToolRegistry:
    registry = ToolRegistry()
    for function in (deliver, free_form, limited, keeps_a_value, nested_default):
        registry.add(function)
    return registry


def by_name(schemas: list[dict[str, Any]], key: str = "name") -> dict[str, dict[str, Any]]:
    return {s.get("function", s)[key]: s for s in schemas}


def check_valid_schema(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"


def test_openai_chat_completions(registry: ToolRegistry) -> None:
    schemas = registry.schemas("openai")
    assert schemas == registry.schemas()  # the default format
    adapter = pydantic.TypeAdapter(ChatCompletionToolParam)
    for schema in schemas:
        assert adapter.validate_python(schema) == schema  # no key the SDK does not know
        check_valid_schema(schema["function"]["parameters"])
    tools = by_name(schemas)
    assert list(tools) == [
        "check_task",
        "list_tasks",
        "stop_task",
        "redirect_task",
        "deliver",
        "free_form",
        "limited",
        "keeps_a_value",
        "nested_default",
    ]
    strict = {name: s["function"]["strict"] for name, s in tools.items()}
    assert strict == {
        "check_task": True,
        "list_tasks": True,
        "stop_task": True,
        "redirect_task": True,
        "deliver": True,
        "free_form": False,  # additionalProperties is a schema
        "limited": False,  # maxLength
        "keeps_a_value": False,  # null is a value, so it cannot stand for the default
        "nested_default": False,  # a nested default cannot be expressed
    }
    assert tools["deliver"]["function"]["description"] == "Deliver a parcel."


def test_the_strict_form_follows_the_rules(registry: ToolRegistry) -> None:
    deliver_params = by_name(registry.schemas("openai"))["deliver"]["function"]["parameters"]
    assert deliver_params["required"] == ["to", "note", "copies"]
    assert deliver_params["properties"]["copies"] == {
        "anyOf": [{"type": "integer"}, {"type": "null"}],
        "description": "How many. (null: the default, 1)",
    }
    assert deliver_params["properties"]["note"] == {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "description": "For the courier.",
    }
    # The $ref with a sibling description is inlined; the nested object is strict too.
    to = deliver_params["properties"]["to"]
    assert "$ref" not in to
    assert to["additionalProperties"] is False
    assert to["required"] == ["city", "zip_code"]
    assert to["description"] == "Where to."

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object":
                assert node["additionalProperties"] is False
                assert sorted(node["required"]) == sorted(node["properties"])
            keywords = set(node) - {"properties", "$defs"}
            assert keywords <= STRICT_KEYWORDS, keywords - STRICT_KEYWORDS
            assert "default" not in node
            for key, value in node.items():
                if key in ("properties", "$defs"):
                    for sub in value.values():
                        walk(sub)
                elif isinstance(value, dict | list):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for schema in registry.schemas("openai"):
        if schema["function"]["strict"]:
            walk(schema["function"]["parameters"])


def test_a_schema_that_cannot_be_strict_is_sent_as_it_is(registry: ToolRegistry) -> None:
    tools = by_name(registry.schemas("openai"))
    assert tools["limited"]["function"]["parameters"] == registry.get("limited").parameters  # type: ignore[union-attr]
    assert tools["free_form"]["function"]["parameters"]["properties"]["data"] == {
        "type": "object",
        "additionalProperties": {"type": "integer"},
    }


def test_strict_schema_refuses_a_root_that_is_not_an_object() -> None:
    assert strict_schema({"anyOf": [{"type": "object"}]}, frozenset()) is None
    assert strict_schema({"type": "object"}, frozenset()) == {
        "type": "object",
        "properties": {},
        "required": [],
        "additionalProperties": False,
    }
    unresolvable = {
        "type": "object",
        "properties": {"x": {"$ref": "#/nowhere", "description": "d"}},
    }
    assert strict_schema({**unresolvable, "required": ["x"]}, frozenset()) is None


def test_openai_responses(registry: ToolRegistry) -> None:
    adapter = pydantic.TypeAdapter(FunctionToolParam)
    chat = by_name(registry.schemas("openai"))
    for schema in registry.schemas("openai-responses"):
        assert adapter.validate_python(schema) == schema
        assert schema["type"] == "function"
        function = chat[schema["name"]]["function"]
        assert {k: v for k, v in schema.items() if k != "type"} == function


def test_anthropic(registry: ToolRegistry) -> None:
    adapter = pydantic.TypeAdapter(ToolParam)
    for schema in registry.schemas("anthropic"):
        validated: Any = adapter.validate_python(schema)
        assert validated == schema
        assert set(schema) <= {"name", "description", "input_schema"}
        check_valid_schema(schema["input_schema"])
        assert schema["input_schema"] == registry.get(schema["name"]).parameters  # type: ignore[union-attr]


def test_mcp(registry: ToolRegistry) -> None:
    for schema in registry.schemas("mcp"):
        tool = MCPTool.model_validate(schema)
        assert tool.name == schema["name"]
        assert tool.model_dump(by_alias=True, exclude_none=True) == schema
        check_valid_schema(schema["inputSchema"])


def test_the_task_tools_in_every_format() -> None:
    for fmt in FORMATS:
        names = [s.get("name") or s["function"]["name"] for s in ToolRegistry().schemas(fmt)]
        assert names == ["check_task", "list_tasks", "stop_task", "redirect_task"], fmt
        assert ToolRegistry(task_tools=False).schemas(fmt) == []


def test_schemas_are_fresh_copies(registry: ToolRegistry) -> None:
    first = registry.schemas("anthropic")
    first[0]["input_schema"]["properties"].clear()
    assert registry.schemas("anthropic")[0]["input_schema"]["properties"]


def test_an_unknown_format_names_the_formats(registry: ToolRegistry) -> None:
    with pytest.raises(ValueError, match="anthropic, mcp, openai, openai-responses"):
        registry.schemas("gemini")
