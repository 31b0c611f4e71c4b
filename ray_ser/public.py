"""A package's public face, imported on first use: ``__all__`` names the API other packages may import, and
``__getattr__`` (PEP 562) loads a name's module only when it is asked for, so importing a package stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_api(package: str, api: Mapping[str, Sequence[str]]) -> tuple[list[str], Callable[[str], Any],
                                                                         Callable[[], list[str]]]:
    """(``__all__``, ``__getattr__``, ``__dir__``) of ``package`` from {submodule: the names it exports}."""
    where = {name: f"{package}.{module}" for module, names in api.items() for name in names}

    def getattr_(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name]), name)

    def dir_() -> list[str]:
        return sorted(where)

    return sorted(where), getattr_, dir_
