"""The extraction stage's config: one typed class that the experiment config's ``extract`` section is and that
:func:`ray_ser.extract.program.extract` takes; its options (less ``aug_copies``) are recorded with the table."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ray_ser.extract.conditions import DEFAULT_CONDITIONS, aug_conditions
from ray_ser.fm.registry import DEFAULT_MODEL
from ray_ser.section import Section

DEFAULT_WHISPER_MODE = "strided:10"
"""Whisper's full 30 s context at about half of trimmed's speed; see the README's Whisper windows section."""

NOT_RECORDED = frozenset({"aug_copies"})
"""Fields the table's recorded options leave out: ``aug_copies`` is recorded as the augmented conditions it adds."""


class ExtractConfig(Section):
    """All-layer extraction with Ray Data: everything that decides what a run writes (recorded with the table)."""

    model: str = DEFAULT_MODEL
    """Embedded model name, Hugging Face model id or local folder."""
    conditions: list[str] = list(DEFAULT_CONDITIONS)
    """Conditions to store: clean, SNR bands (25dB, 15dB, 5dB: noise at an SNR drawn from 20-30, 10-20, 0-10 dB),
    reverb, reverb+15dB."""
    aug_copies: int = Field(0, ge=0, le=10_000)
    """Augmented training copies per utterance (conditions aug0..augN-1), added to ``conditions``."""
    frames: bool = True
    """Store frame matrices (fp16) besides the pooled vectors; training reads frames."""
    frame_layers: list[int] | None = None
    """Store frames of these layers only (null: every layer); pooled vectors are always kept for all."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Model precision: auto is float16 on GPUs (device gpu, or auto resolved to GPUs) and float32 on CPUs."""
    device: Literal["auto", "gpu", "cpu"] = "auto"
    """Where the model actors run: gpu asks Ray for one GPU per actor even when no GPU node is up yet (the cluster's
    autoscaler adds GPU nodes for them); cpu never asks for one; auto is gpu when a node has GPUs or the autoscaler
    has a node type with GPUs, else cpu. A request no node and no node type could meet is refused at once."""
    whisper_mode: str = DEFAULT_WHISPER_MODE
    """How Whisper sees a clip: strided:<s> | trimmed | padded | window:<seconds>."""
    write_mode: Literal["driver", "fragments"] = "driver"
    """driver: actors return rows and the driver appends them; fragments: actors write Lance fragments."""
    batch_size: int = Field(8, ge=1)
    """Utterances per model batch."""
    max_batch_seconds: float = Field(240.0, gt=0)
    """Most audio seconds in one model batch."""
    pool_size: int | None = Field(None, ge=1)
    """Model actors (null: one per GPU, alive or to be added by the autoscaler; on CPUs one per core, at most 4)."""
    threads: int | None = Field(None, ge=1)
    """Torch threads per CPU actor (null: cores / actors)."""
    model_key: str | None = None
    """Name the store files the embeddings under (null: the model, plus @mode for a non-default Whisper mode)."""
    seed: int = 0
    """Seed of the degraded and augmented copies."""
    retry_errors: bool = False
    """Try utterances that failed in earlier runs again."""
    commit_mb: float = Field(64.0, ge=0)
    """Buffer finished rows up to this many MB before one LanceDB commit ..."""
    commit_seconds: float = Field(30.0, ge=0)
    """... or this many seconds, whichever comes first (0: commit every block)."""
    max_seconds: float | None = Field(300.0, gt=0)
    """Longer audio becomes an errors row (read from the header, before decoding); null: no limit."""
    on_drift: Literal["refuse", "new-key"] = "refuse"
    """When options differ from the table's: refuse, or file under a new key (model~<hash>)."""
    wait_lease: float = Field(0.0, ge=0)
    """Seconds to wait while another run writes the same table, then refuse."""
    keep_versions_s: float = Field(3600.0, ge=0)
    """Compaction deletes superseded table versions only this many seconds later (open readers keep theirs)."""
    actor_resources: dict[str, float] = {}
    """Custom Ray resources each model actor needs, e.g. {gpu_node: 0.1} to keep the model on nodes started with
    `ray start --resources '{"gpu_node": 1}'` (empty: anywhere)."""

    @property
    def key(self) -> str:
        """The model key the store files this extraction under (what analyses and training read)."""
        if self.model_key:
            return self.model_key
        return self.model if self.whisper_mode == DEFAULT_WHISPER_MODE else f"{self.model}@{self.whisper_mode}"

    def expanded(self) -> "ExtractConfig":
        """This config as a run applies it: the augmented copies appended to ``conditions`` (``aug_copies`` 0)."""
        if not self.aug_copies:
            return self
        return self.model_copy(update={"conditions": [*self.conditions, *aug_conditions(self.aug_copies)],
                                       "aug_copies": 0})

    def recorded(self) -> dict[str, Any]:
        """The options as the table records them (the keys the drift check compares; ``aug_copies`` expanded)."""
        return self.expanded().model_dump(mode="python", exclude=set(NOT_RECORDED))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every recorded option's default (what a table made before an option existed is compared against)."""
        return cls().recorded()
