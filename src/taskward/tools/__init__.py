"""Tools for language models: a registry with schemas for every major API, and the
task tools a model uses to poll, list and stop what went on in the background.

`calls` and `envelopes` need nothing beyond taskward (the manager's `execute`,
`get_result`, ... use them). The registry needs pydantic (``pip install
'taskward[tools]'``) and is imported when first named here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import ToolContext as ToolContext
    from .definition import Tool as Tool
    from .definition import ToolArgumentsError as ToolArgumentsError
    from .registry import ToolRegistry as ToolRegistry
    from .registry import default_registry as default_registry
    from .registry import tool as tool
    from .schemas import FORMATS as FORMATS

__all__ = (
    "FORMATS",
    "Tool",
    "ToolArgumentsError",
    "ToolContext",
    "ToolRegistry",
    "default_registry",
    "tool",
)

_WHERE = {
    "FORMATS": "schemas",
    "Tool": "definition",
    "ToolArgumentsError": "definition",
    "ToolContext": "context",
    "ToolRegistry": "registry",
    "default_registry": "registry",
    "tool": "registry",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
