"""`Tool`: one tool's name, description and argument schema, read from its function.

The schema comes from the type hints (pydantic builds it, and validates the
arguments a model sends by the same model), the descriptions from the
docstring: its text before the first section is the tool's description, and
its `Args:` section (Google style) or `:param name:` lines (Sphinx style)
describe the parameters. A parameter annotated `ToolContext` is injected at the
call and is not part of the schema.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

try:
    import pydantic
    from pydantic.fields import FieldInfo
except ImportError as exc:  # pragma: no cover - pydantic is in the tools extra
    raise ImportError(
        "taskward.tools needs pydantic to build tool schemas: pip install 'taskward[tools]'"
    ) from exc

from .._checks import check_positive
from .context import ToolContext
from .schemas import clean_schema, strict_schema

__all__ = ["Tool", "ToolArgumentsError", "define", "parse_docstring"]

#: Tool names every model API accepts (OpenAI and Anthropic: 1 to 64 of these).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")

ToolFunction = Callable[..., Coroutine[Any, Any, Any]]

_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Params|Returns?|Yields?|Raises|Examples?|Notes?|Attributes)"
    r":\s*$"
)
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")
_ARG_SECTIONS = frozenset({"args", "arguments", "parameters", "params"})
_SPHINX_OTHER = re.compile(r"^:(type|rtype|returns?|raises?)\b")


class ToolArgumentsError(ValueError):
    """Raised when a model's arguments do not fit a tool's schema; `fields` says where and why."""

    def __init__(self, message: str, fields: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.fields = fields


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The description (text before the first section) and each parameter's description."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    arg_indent: int | None = None
    for raw in lines:
        line = raw.strip()
        if sphinx := _SPHINX_PARAM.match(line):
            section, current = "sphinx", sphinx.group(1)
            params[current] = sphinx.group(2).strip()
            continue
        if _SPHINX_OTHER.match(line):
            section, current = "sphinx-other", None
            continue
        if heading := _SECTION.match(line):
            section = heading.group(1).lower()
            current = arg_indent = None
            continue
        if section is None:
            description.append(line)
        elif section in _ARG_SECTIONS:
            if not line:
                continue
            indent = len(raw) - len(raw.lstrip())
            if arg_indent is None:
                arg_indent = indent
            arg = _ARG_LINE.match(line)
            if arg and indent <= arg_indent:
                current = arg.group(1).lstrip("*")
                params[current] = arg.group(2).strip()
            elif current is not None:
                params[current] = f"{params[current]} {line}".strip()
        elif section == "sphinx" and current is not None and line:
            params[current] = f"{params[current]} {line}".strip()
    # Lines of a paragraph joined (the wrapping was the docstring's), paragraphs kept apart.
    paragraphs = re.split(r"\n\s*\n", "\n".join(description).strip())
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip()), params


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool as a model sees it (`name`, `description`, `parameters`) and how to run it.

    `parameters` is the JSON Schema of the arguments; `strict_parameters` the
    form OpenAI's strict mode takes (None when the schema cannot be strict; see
    `taskward.tools.schemas`). `no_background` tools are always awaited inline;
    `timeout` (seconds) overrides the manager's before a call is backgrounded.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    function: ToolFunction
    model: type[pydantic.BaseModel] = field(repr=False)
    no_background: bool = False
    timeout: float | None = None
    context_parameter: str | None = None
    strict_parameters: dict[str, Any] | None = None
    #: Parameters whose type refuses None but which have a default: a null the model
    #: sends for one (as strict mode makes it do) means "not given".
    null_means_default: frozenset[str] = frozenset()

    def bind(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments for the function, validated; `ToolArgumentsError` if they do not fit."""
        given = {
            k: v for k, v in arguments.items() if not (v is None and k in self.null_means_default)
        }
        try:
            parsed = self.model.model_validate(given)
        except pydantic.ValidationError as exc:
            problems = [
                {
                    "field": ".".join(str(p) for p in err["loc"]) or "(arguments)",
                    "problem": err["msg"],
                }
                for err in exc.errors(include_url=False)
            ]
            summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
            raise ToolArgumentsError(
                f"invalid arguments for {self.name}: {summary}", problems
            ) from None
        return {name: getattr(parsed, name) for name in type(parsed).model_fields}

    def coroutine(self, kwargs: dict[str, Any], context: ToolContext) -> Coroutine[Any, Any, Any]:
        """The call's coroutine, with the context injected if the tool takes one."""
        if self.context_parameter is None:
            return self.function(**kwargs)
        return self.function(**kwargs, **{self.context_parameter: context})


def _has_description(annotation: Any) -> bool:
    if typing.get_origin(annotation) is not typing.Annotated:
        return False
    return any(
        isinstance(meta, FieldInfo) and meta.description for meta in typing.get_args(annotation)[1:]
    )


def _accepts_none(annotation: Any) -> bool:
    try:
        pydantic.TypeAdapter(annotation).validate_python(None)
    except pydantic.ValidationError:
        return False
    return True


def define(
    function: ToolFunction,
    *,
    name: str | None = None,
    description: str | None = None,
    no_background: bool = False,
    timeout: float | None = None,
) -> Tool:
    """Read a `Tool` from an `async def` function (see the module docstring)."""
    if not inspect.iscoroutinefunction(function):
        raise TypeError(
            f"a tool must be an async function, not {function!r} "
            "(wrap blocking work in asyncio.to_thread)"
        )
    tool_name = function.__name__ if name is None else name
    if not NAME_PATTERN.fullmatch(tool_name):
        raise ValueError(f"a tool name is 1 to 64 of A-Z a-z 0-9 _ -, not {tool_name!r}")
    if timeout is not None:
        check_positive("timeout", timeout, allow_zero=True)
    if not isinstance(no_background, bool):
        raise TypeError(f"no_background must be a bool, not {type(no_background).__name__}")
    doc_text, doc_params = parse_docstring(inspect.getdoc(function))
    if description is not None and not isinstance(description, str):
        raise TypeError(f"description must be a str, not {type(description).__name__}")
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except NameError as exc:
        raise TypeError(
            f"the type hints of tool {tool_name!r} do not resolve ({exc}); "
            "define the types they name at module level"
        ) from None

    fields: dict[str, Any] = {}
    context_parameter: str | None = None
    null_means_default: set[str] = set()
    for param in inspect.signature(function).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(
                f"tool {tool_name!r}: parameter {param.name!r} must be a plain or keyword-only one"
            )
        if param.name not in hints:
            raise TypeError(f"tool {tool_name!r}: parameter {param.name!r} needs a type annotation")
        annotation = hints[param.name]
        if annotation is ToolContext:
            context_parameter = param.name
            continue
        default = ... if param.default is param.empty else param.default
        text = doc_params.get(param.name)
        if text and not _has_description(annotation):
            fields[param.name] = (annotation, pydantic.Field(default, description=text))
        else:
            fields[param.name] = (annotation, default)
        if default is not ... and default is not None and not _accepts_none(annotation):
            null_means_default.add(param.name)

    model = pydantic.create_model(
        f"{tool_name}_arguments",
        __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=False),
        **fields,
    )
    try:
        raw_schema = model.model_json_schema()
    except pydantic.errors.PydanticUserError as exc:
        raise TypeError(f"tool {tool_name!r}: no JSON Schema for its arguments ({exc})") from None
    parameters = clean_schema(raw_schema)
    return Tool(
        name=tool_name,
        description=(doc_text if description is None else description).strip(),
        parameters=parameters,
        function=function,
        model=model,
        no_background=no_background,
        timeout=None if timeout is None else float(timeout),
        context_parameter=context_parameter,
        strict_parameters=strict_schema(parameters, frozenset(null_means_default)),
        null_means_default=frozenset(null_means_default),
    )
