"""Corpus adapters: each turns a corpus as its publisher lays it out into a validated :class:`Manifest`."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ray_ser.corpora.manifest import Manifest, ManifestError, Utterance
from ray_ser.public import lazy_api

ADAPTERS = {
    "emodb": "ray_ser.corpora.emodb",
    "ravdess": "ray_ser.corpora.ravdess",
    "ased": "ray_ser.corpora.ased",
    "cremad": "ray_ser.corpora.cremad",
    "msppodcast": "ray_ser.corpora.msppodcast",
    "iemocap": "ray_ser.corpora.iemocap",
    "csv": "ray_ser.corpora.generic_csv",
}


def build_manifest(corpus: str, data_root: str | Path | None = None, **options: Any) -> Manifest:
    """Build the manifest of ``corpus`` found under ``data_root`` (see :func:`ray_ser.settings.data_root`)."""
    from ray_ser.settings import data_root as resolve_root

    if corpus not in ADAPTERS:
        raise ValueError(f"unknown corpus {corpus!r}; known: {sorted(ADAPTERS)}")
    module = importlib.import_module(ADAPTERS[corpus])
    return module.build(resolve_root(data_root), **options)


_lazy, __getattr__, _lazy_dir = lazy_api(__name__, {
    "config": ["DataConfig"],
    "folds": ["ALL_SPEAKERS", "FoldAssignment", "corpus_folds", "loso", "speaker_folds"],
    "generic_csv": ["check_name", "corpus_name"],
    "label_sets": ["SetReport", "map_row", "map_rows", "resolve"],
    "manifest": ["CATEGORIES_KEY", "DIMENSIONS", "REJECTED_KEY"],
})
__all__ = ["ADAPTERS", "Manifest", "ManifestError", "Utterance", "build_manifest", *_lazy]


def __dir__() -> list[str]:
    return sorted(__all__)
