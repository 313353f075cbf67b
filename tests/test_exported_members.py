"""The public surface: `taskward.__all__` and the package namespace agree (as in httpx)."""

from __future__ import annotations
import __future__

import importlib
import pkgutil
import types

import pytest

import taskward
from taskward import errors


def _ruff_sort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps `__all__` in: CONSTANTS, then Classes, then functions."""
    if name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def _public_names(module: types.ModuleType) -> list[str]:
    """Names a user would import: not private, not submodules, not `from __future__` flags."""
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not isinstance(value, __future__._Feature)
    ]


def test_all_is_a_sorted_tuple_without_duplicates() -> None:
    assert isinstance(taskward.__all__, tuple)
    assert len(set(taskward.__all__)) == len(taskward.__all__)
    assert list(taskward.__all__) == sorted(taskward.__all__, key=_ruff_sort_key)


def test_every_name_in_all_exists() -> None:
    for name in taskward.__all__:
        assert hasattr(taskward, name), name


def test_every_public_name_is_in_all() -> None:
    assert sorted(_public_names(taskward), key=_ruff_sort_key) == list(taskward.__all__)


def test_version_is_exported_as_a_string() -> None:
    assert isinstance(taskward.__version__, str)
    assert taskward.__version__.count(".") >= 2


def test_every_exception_is_exported_and_derives_from_the_base() -> None:
    for name in errors.__all__:
        exc = getattr(errors, name)
        assert issubclass(exc, taskward.TaskwardError), name
        assert getattr(taskward, name) is exc, name
        assert exc.__doc__, name


def _package_modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(taskward.__path__, prefix="taskward.")
        if not info.name.split(".")[-1].startswith("test")
    )


@pytest.mark.parametrize(
    "module_name",
    [
        name
        for name in _package_modules()
        # Optional extras: imported only when installed and asked for.
        if not any(part in name for part in ("redis", "compat", "cli", "server", "mcp"))
    ],
)
def test_every_module_all_names_exist(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        return
    for name in names:
        assert hasattr(module, name), f"{module_name}.{name}"
    assert len(set(names)) == len(names)


def test_exported_objects_come_from_the_package() -> None:
    for name in taskward.__all__:
        value = getattr(taskward, name)
        module = getattr(value, "__module__", None)
        if module is not None and not isinstance(value, frozenset):
            assert module.startswith("taskward"), (name, module)
