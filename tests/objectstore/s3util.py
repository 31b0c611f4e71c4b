"""Shared pieces of the object-store tests: a small experiment config on the bucket and row counts of a store."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import yaml
from synthetic import write_corpus


def experiment(tmp: Path, gw, model_dir: Path, name: str, *, store: str, options: bool | dict = True,
               **sections) -> Path:
    """A config file of the synthetic corpus with the store and run folders on the gateway's bucket; ``options``
    puts the gateway's storage options in the file (no AWS_* environment needed anywhere), or these options."""
    csv_path = tmp / "audio" / "synth.csv"
    if not csv_path.exists():
        write_corpus(tmp / "audio", n_speakers=4, per_class=3)
    config = {
        "name": name, "runs": gw.uri("runs"),
        "data": {"corpora": ["csv"], "csv": str(csv_path), "data_root": str(tmp)},
        "store": {"uri": store, **({"options": options if isinstance(options, dict) else gw.storage_options()}
                                   if options else {})},
        "extract": {"model": str(model_dir), "model_key": "tiny", "conditions": ["clean", "5dB"], "batch_size": 4},
        "analysis": {"mis": False, "probe": True, "clusters": {"k": [4], "sample_frames": 2000}},
        "train": {"arch": "mlp", "mlp_hidden": 0, "auto_layers": 1, "epochs": 2, "patience": 2, "batch_size": 8,
                  "cpus_per_worker": 0.5, "spec_augment": False, "outer_folds": "0,1"},  # two of the 4 LOSO folds
        "evaluate": {"n_boot": 20},
    }
    for key, value in sections.items():
        config.setdefault(key, {}).update(value) if isinstance(value, dict) else config.__setitem__(key, value)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def no_aws_env() -> dict[str, str]:
    """This process's environment without any AWS_* variable (the config file alone must carry the options)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RAY_ADDRESS"}


def row_counts(store, model: str = "tiny") -> Counter:
    """{(utt_id, condition, layer): rows} of the model's table."""
    from ray_ser.store.names import table_name

    t = store.open(table_name(model)).to_lance().to_table(columns=["utt_id", "condition", "layer"])
    return Counter(zip(*(t.column(c).to_pylist() for c in ("utt_id", "condition", "layer"))))


def assert_exactly_once(counts: Counter, utt_ids, conditions, num_layers: int = 3) -> None:
    """Every (utterance, condition, layer) stored once: none missing, none duplicated."""
    want = {(u, c, layer) for u in utt_ids for c in conditions for layer in range(num_layers)}
    missing = want - set(counts)
    duplicated = {k: n for k, n in counts.items() if n > 1}
    assert not missing and not duplicated, f"missing {sorted(missing)[:5]} ({len(missing)}), duplicated {len(duplicated)}"
    assert set(counts) == want
