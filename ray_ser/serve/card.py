"""A bundle's ``README.md``: a Hugging Face model card (YAML front matter that ``huggingface_hub.ModelCard``
parses: pipeline tag, datasets, metrics, model-index) whose text comes from the run's evaluation folder: the
protocol, UAR with its speaker-bootstrap interval per condition and per gender, the gender gap, calibration, the
training config and known limits."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import yaml

from ray_ser.serve.bundle import Bundle

CALIBRATION = ("ece", "ece_uncalibrated", "brier", "nll")
TRAIN_KEYS = ("model", "arch", "mlp_hidden", "pooling", "layer_mix", "layers", "layer", "keep_ratio", "scaler",
              "label_set", "corpora", "conditions", "epochs", "lr", "batch_size", "seed", "folds", "inner_folds",
              "dimensional")


def head_words(train: dict) -> str:
    """What the head is, in words: the MLP/linear head always takes the mean frame (its ``pooling`` is unused)."""
    if train.get("arch") == "mlp":
        hidden = train.get("mlp_hidden") or 0
        words = f"MLP head ({hidden} hidden units) on the mean frame" if hidden else "linear head on the mean frame"
    else:
        words = f"{train.get('arch')} head, {train.get('pooling')} pooling"
    return words + ("; a learned softmax mix of the layers" if train.get("layer_mix") == "learned" else "")


def _cell(row: dict | None, digits: int = 3) -> str:
    if not row or row.get("value") is None:
        return "-"
    v = f"{row['value']:.{digits}f}"
    if row.get("ci_low") is not None and row.get("ci_high") is not None:
        v += f" [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"
    return v


def _conditions(metrics: pl.DataFrame) -> list[str]:
    from ray_ser.evaluate.tables import condition_order

    return condition_order(metrics["condition"].unique().to_list())


def _pick(metrics: pl.DataFrame, group_by: str, group: str, condition: str, metric: str) -> dict | None:
    m = metrics.filter((pl.col("group_by") == group_by) & (pl.col("group") == group) & (pl.col("condition") == condition)
                       & (pl.col("metric") == metric))
    if "k" in m.columns and m.height > 1:
        m = m.filter(pl.col("k").is_null() | (pl.col("k") == 1))
    return m.row(0, named=True) if m.height else None


def protocol(predictions: pl.DataFrame | None, metrics: pl.DataFrame | None, fold_id: str | None) -> list[str]:
    """Lines on how the figures were measured: the protocol, folds, corpora, speakers and utterances."""
    lines = []
    kind = metrics["protocol"].drop_nulls().unique().to_list() if metrics is not None and "protocol" in metrics.columns else []
    lines.append(f"- Protocol: {', '.join(kind) or 'out-of-fold'} (each utterance is scored by the outer fold whose "
                 "training never saw its speaker: speaker-independent folds).")
    if fold_id:
        lines.append(f"- Fold assignment: `{fold_id}`.")
    if predictions is not None and predictions.height:
        if "fold" in predictions.columns:
            lines.append(f"- Outer folds: {predictions['fold'].n_unique()}.")
        clean = predictions.filter(pl.col("condition") == "clean") if "condition" in predictions.columns else predictions
        by = clean.group_by("corpus").agg(pl.col("speaker").n_unique().alias("speakers"),
                                          pl.col("utt_id").n_unique().alias("utterances")).sort("corpus") \
            if "corpus" in clean.columns else None
        if by is not None:
            for r in by.iter_rows(named=True):
                lines.append(f"- Corpus {r['corpus']}: {r['speakers']} speakers, {r['utterances']} utterances.")
    return lines


def results_tables(metrics: pl.DataFrame) -> list[str]:
    """Markdown tables: UAR per condition overall, per gender and the gender gap; calibration per condition."""
    conds = _conditions(metrics)
    out = ["| condition | UAR [95 % CI] | UAR male | UAR female | gap male-female |", "|---|---|---|---|---|"]
    for c in conds:
        out.append(f"| {c} | {_cell(_pick(metrics, 'condition', c, c, 'uar') or _pick(metrics, 'all', 'all', c, 'uar'))} "
                   f"| {_cell(_pick(metrics, 'gender', 'male', c, 'uar'))} "
                   f"| {_cell(_pick(metrics, 'gender', 'female', c, 'uar'))} "
                   f"| {_cell(_pick(metrics, 'gender_gap', 'male-female', c, 'uar'))} |")
    out += ["", "Calibration of the category probabilities (after temperature scaling; ECE before it in the last column):",
            "", "| condition | ECE (15 bins) | Brier | NLL | ECE before scaling |", "|---|---|---|---|---|"]
    for c in conds:
        row = {m: _pick(metrics, "condition", c, c, m) or _pick(metrics, "all", "all", c, m) for m in CALIBRATION}
        out.append(f"| {c} | {_cell(row['ece'])} | {_cell(row['brier'])} | {_cell(row['nll'])} "
                   f"| {_cell(row['ece_uncalibrated'])} |")
    return out


def front_matter(bundle: Bundle, metrics: pl.DataFrame | None, corpora: list[str]) -> dict:
    """The card's metadata: Hugging Face's model-card fields, with the clean UAR in a model-index."""
    meta = {"library_name": "ray_ser", "pipeline_tag": "audio-classification",
            "tags": ["speech-emotion-recognition", "ray_ser", bundle.kind],
            "datasets": corpora or None, "metrics": ["uar", "ece", "brier", "nll"], "base_model": None}
    fm = str(bundle.fm.get("model") or "")
    if fm and "/" in fm and not Path(fm).exists():  # a hub id, not a local folder
        meta["base_model"] = fm
    if metrics is not None and metrics.height:
        results = []
        for c in _conditions(metrics):
            row = _pick(metrics, "condition", c, c, "uar") or _pick(metrics, "all", "all", c, "uar")
            if row and row.get("value") is not None:
                results.append({"task": {"type": "audio-classification", "name": "Speech emotion recognition"},
                                "dataset": {"name": "+".join(corpora) or "store", "type": "+".join(corpora) or "store",
                                            "config": c},
                                "metrics": [{"type": "uar", "value": round(float(row["value"]), 4),
                                             "name": f"UAR ({c})"}]})
        if results:
            meta["model-index"] = [{"name": bundle.model_id, "results": results}]
    return {k: v for k, v in meta.items() if v is not None}


def model_card(bundle: Bundle, metrics: pl.DataFrame | None = None, predictions: pl.DataFrame | None = None) -> str:
    """The card's text (front matter and Markdown)."""
    train = bundle.members[0].train
    corpora = sorted(predictions["corpus"].unique().to_list()) if predictions is not None and "corpus" in predictions.columns \
        else list(train.get("corpora") or [])
    fm = bundle.fm
    scaler = train.get("scaler", "global")
    temps = [m.temperature for m in bundle.members]
    lines = ["---", yaml.safe_dump(front_matter(bundle, metrics, corpora), sort_keys=False).rstrip(), "---", "",
             f"# {bundle.model_id}", "",
             f"A speech emotion recognition head ({head_words(train)}; {bundle.kind}, "
             f"{len(bundle.members)} member{'s' if len(bundle.members) > 1 else ''}) on the frames of layers "
             f"{bundle.layers} of the foundation model `{fm.get('model')}` (weights sha256 "
             f"`{str(fm.get('weights_hash'))[:16]}...`, {fm.get('sample_rate')} Hz). Categories: "
             f"{', '.join(bundle.categories) or '(none)'}" + (f"; dimensions: {', '.join(bundle.dimensions)}" if bundle.dimensions
                                                              else "") + ".", "",
             "```python", "from ray_ser import load_model", "", 'm = load_model("THIS_FOLDER")',
             'm.predict("a.wav")          # {category: probability}', "m.predict_many(paths)        # a Polars frame",
             "```", "", "or `ray-ser predict --model THIS_FOLDER --input FOLDER --out predictions.parquet`.", "",
             "## Evaluation protocol", "", *protocol(predictions, metrics, bundle.members[0].plan.get("fold_id")), ""]
    if metrics is not None and metrics.height:
        lines += ["## Results", "", "Unweighted average recall with its 95 % speaker-bootstrap interval (speakers "
                  "resampled) per condition, per gender, and the gender gap:", "", *results_tables(metrics), ""]
    else:
        lines += ["## Results", "", "Not evaluated: export after `ray-ser evaluate --run RUN`.", ""]
    lines += ["## Calibration", "",
              f"Temperature scaling fitted on each fold's inner validation speakers: T = "
              f"{', '.join('-' if t is None else f'{t:.3f}' for t in temps)}. Probabilities are the temperature-scaled "
              "softmax" + (" averaged over the members." if len(temps) > 1 else "."), "",
              "## Training config", "", "```yaml",
              yaml.safe_dump({k: train[k] for k in TRAIN_KEYS if k in train}, sort_keys=False).rstrip(), "```", "",
              "## Input", "",
              f"- Scaler: {scaler}" + (" (each training corpus standardised by its own frame statistics; new audio gets "
                                       "the training corpora's pooled statistics, or with `--scaler input` the input "
                                       "set's own)" if scaler == "per-corpus" else " (fitted on the training frames, part "
                                                                                  "of the head)") + ".",
              f"- Mask: {'saliency-selected dimensions' if any(m.plan.get('keep') is not None for m in bundle.members) else 'none'}.",
              f"- Audio is decoded, down-mixed and resampled to {fm.get('sample_rate')} Hz as extraction does.", "",
              "## Known limits", "", *limits(bundle, corpora), ""]
    return "\n".join(lines)


def limits(bundle: Bundle, corpora: list[str]) -> list[str]:
    fm = bundle.fm
    out = [f"- Closed set: every input gets a distribution over {', '.join(bundle.categories) or 'no categories'}, "
           "including speech with none of these emotions.",
           f"- Trained and evaluated on {', '.join(corpora) or 'the run corpora'}: their languages, speakers and "
           "recording set-ups (mostly acted speech); other speech is out of domain."]
    if fm.get("max_seconds"):
        out.append(f"- Files longer than {fm['max_seconds']:g} s are refused unless scored in windows "
                   "(`--window S --hop S`); the training clips were utterances of a few seconds.")
    if "ased" in corpora:
        out.append("- ASED's clips are short and of similar length: scores of much longer recordings are less reliable; "
                   "score them in windows.")
    if bundle.kind == "final":
        out.append("- The figures above are the out-of-fold estimate of the recipe; this final model trained on every "
                   "speaker, so no held-out figure of it exists.")
    return out


def read_evaluation(eval_dir: str | Path | None) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    """(metrics, predictions) of an evaluation folder (None where the folder or file is absent)."""
    if eval_dir is None:
        return None, None
    d = Path(eval_dir)
    metrics = pl.read_parquet(d / "metrics.parquet") if (d / "metrics.parquet").exists() else None
    pred = pl.read_parquet(d / "predictions.parquet", columns=None) if (d / "predictions.parquet").exists() else None
    return metrics, pred
