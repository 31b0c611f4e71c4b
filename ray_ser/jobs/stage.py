"""The stage contract's shared parts: a typed result every stage's ``run(cfg, store, ...)`` returns, and the one
place an entry point opens the store (:func:`open_store`), so the stages pass the Store object on."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterator

from ray_ser.store import Store


@dataclass
class StageResult:
    """Base of the stages' typed results; read by attribute, or by key as the stages' dicts were (``r["overall"]``,
    ``r.get("race")``), so callers of the old dict results keep working."""

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and any(f.name == key for f in fields(self)) and getattr(self, key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self else default

    def keys(self) -> Iterator[str]:
        return (f.name for f in fields(self) if getattr(self, f.name) is not None)


def open_store(cfg) -> Store:
    """The experiment's store, opened once at the entry (its storage options registered by the config's reading)."""
    return Store(cfg.store.uri)
