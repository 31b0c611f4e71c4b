"""Training: fold plans, the Ray Data frame reader, the epoch loop, the Ray Train driver, the Tune search and
the neural network modules."""

from ray_ser.public import lazy_api

__all__, __getattr__, __dir__ = lazy_api(__name__, {
    "calibration": ["scale"],
    "checkpoints": ["FINAL", "final_checkpoint", "fold_checkpoints", "load_fold_model"],
    "config": ["TrainConfig"],
    "driver": ["final_config", "run"],
    "loop": ["EpochRunner", "build_fold_model", "epoch_batches"],
    "plan": ["FoldPlan", "PlanMissing", "auto_layers", "corpus_rows", "fold_datasets", "plan_fold", "planned_fold",
        "prepare_plans", "resolve_assignment", "run_rows", "select_folds", "stored_layers"],
    "pooled": ["pooled_model", "pooled_predictions"],
    "reader": ["InMemorySource", "PooledFrames", "ShardCache", "collate", "dim_ranges", "frame_stats",
        "frames_dataset", "load_labels", "ragged", "scale_dims", "standardise"],
    "synthetic_fold": ["synthetic_fold"],
    "tune": ["SearchOptions", "run_search"],
    "tune_config": ["TuneConfig"],
})
