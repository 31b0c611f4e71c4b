"""Analyses of the stored embeddings, each fitted per outer fold on its training speakers: dimension saliency,
layer criteria, linear probes, frame clusters, pruned frames and the fold plans training reads."""

from ray_ser.public import lazy_api

__all__, __getattr__, __dir__ = lazy_api(__name__, {
    "config": ["AnalysisConfig", "ClusterConfig", "PruneConfig"],
    "clusters": ["assign_frames", "ensure_centroids", "fit_kmeans", "nearest", "purity", "read_centroids"],
    "fold_inputs": ["IGNORE", "TARGET_RANGE", "Labels", "TargetColumns", "corpus_categories", "dim_ranges",
        "frame_stats", "input_layers", "load_labels", "scale_dims"],
    "fold_plans": ["MADE_BY", "FoldPlan", "PlanMissing", "PlanSpec", "auto_layers", "build_plan", "cluster_layer",
        "named_layers", "read_fold_plan", "stored_folds", "framed_layers", "write_fold_plans"],
    "layer_selection": ["DEFAULT_CRITERION", "inner_folds", "layer_prior", "layers_for_folds", "ranked_layers"],
    "probe": ["DEFAULT_CS", "READOUTS", "corpus_scalers", "fit_probe", "inner_c", "layer_probe", "layer_set_probe",
        "layer_set_ridge", "one_thread", "plot_layers", "readout", "scale_by_corpus", "spearman"],
    "pruned_frames": ["write_pruned_frames"],
    "saliency": ["DEFAULT_BINS"],
    "saliency_store": ["layer_matrix", "layers_of", "read_layer_ranking"],
})
