"""One tool definition, four wire formats: OpenAI Chat Completions and Responses,
Anthropic Messages, and MCP.

OpenAI's strict mode (the model's arguments are guaranteed to fit the schema)
takes only a subset of JSON Schema: the root is an object, every object lists
all its properties in `required` and has `additionalProperties: false`, and only
some keywords may appear (``STRICT_KEYWORDS``, ``STRICT_FORMATS``). An optional
argument fits when it can be given as null: a parameter whose default is None
(and whose type takes None) is simply required and nullable, and a parameter
with another default whose type refuses None becomes nullable too, null meaning
"the default" (`ToolRegistry.call` drops such nulls before validating). A
schema that cannot be made strict (an `int | None = 5`, a `str` with
`max_length`, a free-form dict) is sent with `strict: false` as it is.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Protocol

from .._records import dump_json

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["FORMATS", "Described", "clean_schema", "strict_schema", "tool_schema"]

FORMATS = ("anthropic", "mcp", "openai", "openai-responses")

#: Keywords OpenAI's strict mode accepts in a schema.
STRICT_KEYWORDS = frozenset(
    {
        "$defs",
        "$ref",
        "additionalProperties",
        "anyOf",
        "const",
        "description",
        "enum",
        "exclusiveMaximum",
        "exclusiveMinimum",
        "format",
        "items",
        "maxItems",
        "maximum",
        "minItems",
        "minimum",
        "multipleOf",
        "pattern",
        "properties",
        "required",
        "title",
        "type",
    }
)
#: String formats OpenAI's strict mode accepts.
STRICT_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)

# Where subschemas sit in a schema: under these keys one, a list, or a name -> schema map.
_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")

Schema = dict[str, Any]


class Described(Protocol):
    """What a wire format needs of a tool (`taskward.tools.Tool` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def parameters(self) -> Schema: ...
    @property
    def strict_parameters(self) -> Schema | None: ...


def _walk(schema: Schema, visit: Callable[[Schema], None]) -> None:
    """Call `visit` on `schema` and on every subschema in it (not on property names)."""
    visit(schema)
    for key in _ONE:
        sub = schema.get(key)
        if isinstance(sub, dict):
            _walk(sub, visit)
    for key in _MANY:
        for sub in schema.get(key) or ():
            if isinstance(sub, dict):
                _walk(sub, visit)
    for key in _MAPS:
        subs = schema.get(key)
        if isinstance(subs, dict):
            for sub in subs.values():
                if isinstance(sub, dict):
                    _walk(sub, visit)


def clean_schema(schema: Schema) -> Schema:
    """pydantic's schema without the `title`s it makes up from names (noise to a model)."""
    out = copy.deepcopy(schema)

    def drop_title(node: Schema) -> None:
        if isinstance(node.get("title"), str):
            del node["title"]

    _walk(out, drop_title)
    return out


def _admits_null(schema: Schema) -> bool:
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(isinstance(s, dict) and _admits_null(s) for s in schema.get("anyOf") or ())


def _nullable(prop: Schema) -> Schema:
    """`prop` (without its default) or null."""
    inner = {k: v for k, v in prop.items() if k not in ("default", "description")}
    if set(inner) == {"anyOf"}:
        variants = [*inner["anyOf"], {"type": "null"}]
    else:
        variants = [inner, {"type": "null"}]
    out: Schema = {"anyOf": variants}
    note = f"null: the default, {dump_json(prop['default'])}"
    described = prop.get("description")
    out["description"] = f"{described} ({note})" if described else note.capitalize()
    return out


def _resolve(root: Schema, ref: str) -> Schema | None:
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


def strict_schema(parameters: Schema, null_means_default: frozenset[str]) -> Schema | None:
    """The strict-mode form of a tool's `parameters`, or None when it cannot have one."""
    if parameters.get("type") != "object":
        return None
    schema = copy.deepcopy(parameters)
    props = schema.setdefault("properties", {})
    required = set(schema.get("required", ()))
    for name in list(props):
        if name in required:
            continue
        if name in null_means_default:
            props[name] = _nullable(props[name])
        elif not (props[name].get("default", 0) is None and _admits_null(props[name])):
            return None
    schema["required"] = list(props)
    fits = True

    def make_strict(node: Schema) -> None:
        nonlocal fits
        ref = node.get("$ref")
        if isinstance(ref, str) and len(node) > 1:
            # A $ref with siblings (a description) is inlined: strict mode takes a bare $ref.
            target = _resolve(schema, ref)
            if target is None:
                fits = False
                return
            del node["$ref"]
            node.update({**copy.deepcopy(target), **node})
        if node.get("default", 0) is None:
            del node["default"]
        if not STRICT_KEYWORDS.issuperset(node):
            fits = False
        fmt = node.get("format")
        if fmt is not None and fmt not in STRICT_FORMATS:
            fits = False
        if node.get("type") == "object" or "properties" in node:
            extra = node.setdefault("additionalProperties", False)
            node_props = node.setdefault("properties", {})
            node_required = set(node.get("required", ()))
            for key, prop in node_props.items():
                optional = key not in node_required
                if optional and not (prop.get("default", 0) is None and _admits_null(prop)):
                    fits = False
            node["required"] = list(node_props)
            if extra is not False:
                fits = False

    _walk(schema, make_strict)
    return schema if fits else None


def tool_schema(tool: Described, fmt: str) -> Schema:
    """`tool` as the API named by `fmt` (one of `FORMATS`) takes it."""
    described: Schema = {"description": tool.description} if tool.description else {}
    if fmt in ("openai", "openai-responses"):
        strict = tool.strict_parameters is not None
        parameters = tool.strict_parameters if strict else tool.parameters
        function: Schema = {
            "name": tool.name,
            **described,
            "parameters": copy.deepcopy(parameters),
            "strict": strict,
        }
        if fmt == "openai":
            return {"type": "function", "function": function}
        return {"type": "function", **function}
    if fmt == "anthropic":
        return {"name": tool.name, **described, "input_schema": copy.deepcopy(tool.parameters)}
    if fmt == "mcp":
        return {"name": tool.name, **described, "inputSchema": copy.deepcopy(tool.parameters)}
    raise ValueError(f"unknown schema format {fmt!r}; the formats are {', '.join(FORMATS)}")
