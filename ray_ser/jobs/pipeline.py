"""The whole flow of one experiment config: manifests -> all-layer extraction -> saliency + probes -> frame
clusters per fold -> an emotion model per fold (Ray Train) -> out-of-fold evaluation tables and report (-> with
crosscorpus.enabled, the leave-one-corpus-out matrix).

    ray-ser run configs/emodb.yaml          (or: python jobs/pipeline.py --config configs/emodb.yaml)

The resolved config is written to <runs>/<name>/config.yaml first and every stage is called with it (typed, and
the store opened once), so running one stage by hand with ``--config <runs>/<name>/config.yaml`` repeats exactly
what the pipeline did.
Each stage resumes on a re-run.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray_ser import console
from ray_ser.config import (
    ExperimentConfig,
    add_config_args,
    csv_list,
    from_args,
    int_list,
)
from ray_ser.jobs.stage import StageResult, open_store
from ray_ser.store import Store

if TYPE_CHECKING:
    from ray_ser.jobs.crosscorpus import CrossCorpusResult
    from ray_ser.jobs.frames import FramesResult
    from ray_ser.jobs.saliency import SaliencyResult
    from ray_ser.jobs.train import TrainResult


def parser() -> argparse.ArgumentParser:
    p = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--corpus", type=csv_list, help="comma-separated corpora (data.corpora)")
    p.add_argument("--data-root", help="folder holding the corpora (data.data_root)")
    p.add_argument("--model", help="model to extract (extract.model)")
    p.add_argument("--store", help="LanceDB store URI (store.uri)")
    p.add_argument("--limit", type=int, help="only N utterances, spread over the speakers and categories (smoke runs)")
    p.add_argument("--k", type=int_list, help="cluster counts of the frame k-means (analysis.clusters.k)")
    p.add_argument("--runs", help="folder of run folders (runs)")
    p.add_argument("--name", help="experiment name: the run folder is <runs>/<name> (name)")
    p.add_argument("--epochs", type=int, help="most epochs per fold (train.epochs)")
    p.add_argument("--lr", type=float, help="learning rate (train.lr)")
    p.add_argument("--seeds", type=int, help="train and score N seeds of the training config, report their spread (seeds)")
    p.add_argument("--layer-mix", choices=("none", "learned"),
                   help="learned: the models mix every stored layer by learned weights (train.layer_mix)")
    return p


BINDS = {
    "corpus": "data.corpora", "data_root": "data.data_root", "model": "extract.model", "store": "store.uri",
    "limit": "data.limit", "k": "analysis.clusters.k", "runs": "runs", "name": "name", "epochs": "train.epochs",
    "lr": "train.lr", "seeds": "seeds", "layer_mix": "train.layer_mix",
}
"""Each flag's config key."""


@dataclass
class PipelineResult(StageResult):
    """The whole flow: the saliency stage's result (its probes race the model in the summary), the frames and train
    stages', the evaluation, the closing summary line(s) and, with crosscorpus.enabled, the matrix."""

    probes: SaliencyResult | None = None
    frames: FramesResult | None = None
    train: TrainResult | None = None
    evaluation: Any = None
    summary: str = ""
    crosscorpus: CrossCorpusResult | None = None


def run(cfg: ExperimentConfig, store: Store | None = None) -> PipelineResult:
    """Every stage of ``cfg`` in turn, each called with the typed config and the one open ``store`` (opened here
    when not given); the resolved config is written to the run folder first (to re-run a stage by hand)."""
    from ray_ser.jobs import evaluate as evaluate_job
    from ray_ser.jobs import extract as extract_job
    from ray_ser.jobs import frames as frames_job
    from ray_ser.jobs import saliency as saliency_job
    from ray_ser.jobs import train as train_job

    cfg.save(cfg.run_dir)
    log = console.setup(cfg.run_dir)
    console.show_details(False)  # tables and per-layer figures go to the log; the console keeps the results
    console.say(f"experiment {cfg.name}: {', '.join(cfg.data.corpora) or cfg.data.manifest}, {cfg.extract.key}, "
                f"store {cfg.store.uri}, run folder {cfg.run_dir} (log: {log})")
    store = store or open_store(cfg)
    extract_job.run(cfg, store)
    # per-layer saliency (and, with analysis.probe, the probe baseline to beat)
    probes = saliency_job.run(cfg, store, plans=False)
    # frame clusters per outer fold, of the layer the layer criterion picks on that fold's training speakers; then
    # the fold plans, after the centroids they read (so no plan fits k-means the frames stage already fitted)
    frames = frames_job.run(cfg, store, plans=True)
    # emotion models per outer fold (layers chosen per fold on its training speakers), then the evaluation
    trained = train_job.run(cfg, store)
    evaluation = evaluate_job.run(cfg, store)
    lines = []
    if evaluation.get("spread") is not None:  # several seeds: the spread first, the race (first seed's) last
        from ray_ser.evaluate.seeds import spread_lines

        lines.append(spread_lines(evaluation["spread"]))
    dims = evaluation.get("dims")
    has_dims = dims is not None and dims.height > 0
    if evaluation["overall"].height or not has_dims:  # UAR where the run has categories
        line = versus_baseline(evaluation["overall"], probes.get("set_probe"), cfg.train.arch,
                               probes.get("set_probe_layers", ""), evaluation.get("race"))
        lines.append(line if "seed" not in evaluation else f"seed {evaluation['seed']}: {line}")
    if has_dims:  # CCC where it has A/V/D
        lines += versus_ridge(evaluation["dims"], probes.get("set_ridge"), cfg.train.arch,
                              probes.get("set_probe_layers", ""))
    line = "\n".join(lines)
    console.say(line)
    result = PipelineResult(probes=probes, frames=frames, train=trained, evaluation=evaluation, summary=line)
    if cfg.crosscorpus.enabled:  # the leave-one-corpus-out matrix over the experiment's corpora
        from ray_ser.jobs import crosscorpus as crosscorpus_job

        # the matrix trains on train.store (the experiment's unless the config names another)
        train_store = store if cfg.train.store == store.uri else Store(cfg.train.store)
        result.crosscorpus = crosscorpus_job.run(cfg, train_store, out=str(cfg.run_dir / "crosscorpus"))
    return result


def main(argv: list[str] | None = None) -> PipelineResult:
    """The argparse layer: the config from the flags, the store opened once, then :func:`run`."""
    cfg, _ = from_args(parser(), argv, BINDS)
    return run(cfg, open_store(cfg))


VERDICT = {"beats": "the model beats the probe beyond the interval",
           "ties": "a tie: 0 is inside the interval",
           "loses": "the model loses to the probe beyond the interval",
           "no interval": "one speaker: no interval, no verdict"}
"""The last words of the pipeline's line for each verdict of ``ray_ser.evaluate.race.verdict``."""


def versus_baseline(overall, set_probe: dict | None, arch: str, layers: str = "", race=None) -> str:
    """One line: the trained model's pooled clean UAR (from jobs/evaluate.py's per-condition ``overall`` table)
    next to the probe baseline's on the same utterances (``layers``: what the baseline probed); with the evaluation's
    ``race`` table (``ray_ser.evaluate.race.race_summary``: the probe refitted on the model's own folds) the paired
    difference and whether the model beats the probe beyond its interval, ties it or loses."""
    import polars as pl

    clean = overall.filter(pl.col("condition") == "clean")
    paired = race.filter(pl.col("condition") == "clean") if race is not None and race.height else None
    if clean.height == 0 or (not set_probe and (paired is None or paired.height == 0)):
        return "no clean UAR or no probe baseline to compare"
    model = f"{clean['value'][0]:.3f}" + (f" [{clean['ci_low'][0]:.3f}, {clean['ci_high'][0]:.3f}]"
                                          if clean["ci_low"][0] is not None else "")
    line = f"clean UAR, pooled over the outer folds: {arch} model {model} vs the probe baseline " \
           f"({layers or 'its layers'}, C by inner CV) "
    if paired is None or paired.height == 0:
        return line + f"{set_probe['uar']:.3f}"
    from ray_ser.evaluate.race import verdict

    r = paired.row(0, named=True)
    v = verdict(r["difference"], r["ci_low"], r["ci_high"])
    ci = f" [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" if v != "no interval" else ""
    return line + (f"{r['probe_uar']:.3f} on the same folds; model minus probe {r['difference']:+.3f}{ci} "
                   f"(paired speaker bootstrap): {VERDICT[v]}")


def versus_ridge(dims, set_ridge: dict | None, arch: str, layers: str = "") -> list[str]:
    """One line per dimension: the trained model's pooled clean CCC (jobs/evaluate.py's ``dims`` table) with its
    speaker-bootstrap interval next to the ridge probe baseline's on the same utterances, and whether each lies
    inside the other's interval."""
    import polars as pl

    clean = dims.filter(pl.col("condition") == "clean")
    out = []
    for r in clean.iter_rows(named=True):
        d = r["metric"].removeprefix("ccc_")
        base = (set_ridge or {}).get("dims", {}).get(d)
        model = f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if r["ci_low"] is not None \
            else f"{r['value']:.3f}"
        if base is None:
            out.append(f"clean CCC {d}, pooled over the outer folds: {arch} model {model} (no ridge probe baseline)")
            continue
        lo, hi = base["ci"]
        inside = r["ci_low"] is not None and r["ci_low"] <= base["ccc"] <= r["ci_high"] and lo <= r["value"] <= hi
        out.append(f"clean CCC {d}, pooled over the outer folds: {arch} model {model} vs the ridge probe baseline "
                   f"({layers or 'its layers'}, alpha by inner CV) {base['ccc']:.3f} [{lo:.3f}, {hi:.3f}]"
                   + (" (each inside the other's interval)" if inside else ""))
    return out or ["no clean CCC to compare"]


if __name__ == "__main__":
    main()
