"""The data stage's config: which corpora, and where their audio is (the experiment config's ``data`` section)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from ray_ser.section import Section

if TYPE_CHECKING:  # an annotation only: the store's section sits a stage above
    from ray_ser.store.config import StoreConfig


class DataConfig(Section):
    """Which corpora, and where their audio is."""

    corpora: list[str] = []
    """Corpus adapters to extract (emodb, ravdess, cremad, iemocap, msppodcast, csv); training reads these corpora's
    utterances (empty: extraction needs --corpus or a manifest, and training reads every labelled utterance)."""
    data_root: str | None = None
    """Folder holding the corpora (null: $RAY_SER_DATA_ROOT, then ../shared/corpora)."""
    manifest: str | None = None
    """A manifest Parquet written by `ray-ser manifest`, extracted instead of building the corpora's manifests."""
    csv: str | None = None
    """With the `csv` corpus: the CSV file of utterances (path, speaker, label, ...); a path or an object-store URI."""
    audio_root: str | None = None
    """With the `csv` corpus: the folder the CSV's paths are relative to (a path or a URI; default: the CSV's folder)."""
    csv_name: str | None = None
    """With the `csv` corpus: the name the store files it under (null: the CSV's `corpus` column, else the file's
    stem); a safe name (letters, digits, _ . -) and no built-in adapter's."""
    limit: int | None = Field(None, ge=1)
    """Extract only this many utterances per corpus, spread over speakers and categories (smoke runs)."""
    options: dict[str, str | int | float | bool] = {}
    """Storage options of the inputs' URIs (csv, audio_root, manifest and audio paths: s3://, gs://, az://) when they
    differ from the store's (another bucket's credentials, another endpoint); the keys of store.options. Empty: the
    store's options for URIs of the store's scheme, else the environment's."""

    def corpus_names(self, store: "StoreConfig | None" = None) -> list[str]:
        """The names the store files these corpora under: the adapter's, or for `csv` the one
        :mod:`ray_ser.corpora.generic_csv` gives it (``csv_name``, else the CSV's `corpus` column, else its stem;
        the stem too when the CSV is not on this machine). A CSV on an object store is read with this section's
        options, else ``store``'s."""
        from csv import Error as CsvError

        from ray_ser.corpora.generic_csv import corpus_name
        from ray_ser.inputs import config_options, stem
        from ray_ser.settings import data_root
        from ray_ser.storage import is_uri

        names = []
        for corpus in self.corpora:
            if corpus != "csv":
                names.append(corpus)
            elif self.csv_name:
                names.append(self.csv_name)
            elif self.csv and is_uri(self.csv):
                options = config_options(self.csv, self.options, store and store.uri, store and store.options)
                try:
                    names.append(corpus_name(data_root(self.data_root), self.csv, options=options))
                except Exception:  # noqa: BLE001 - not readable with these options: building the manifest says why
                    names.append(stem(self.csv))
            elif self.csv:
                try:
                    names.append(corpus_name(data_root(self.data_root), self.csv))
                except (OSError, UnicodeDecodeError, CsvError):  # not readable here
                    names.append(Path(self.csv).stem)
        return names

    @field_validator("csv_name")
    @classmethod
    def _csv_name(cls, name: str | None) -> str | None:
        from ray_ser.corpora.generic_csv import check_name

        return None if name is None else check_name(name, "data.csv_name")

    @field_validator("corpora")
    @classmethod
    def _known(cls, corpora: list[str]) -> list[str]:
        from ray_ser.corpora import ADAPTERS

        unknown = [c for c in corpora if c not in ADAPTERS]
        if unknown:
            raise ValueError(f"unknown corpus {unknown[0]!r}; known: {', '.join(sorted(ADAPTERS))}")
        return corpora
