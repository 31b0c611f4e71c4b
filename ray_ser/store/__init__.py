"""The store: LanceDB tables of embeddings, manifests, errors and runs (core), the catalog of analysis tables,
and the leases that keep one writer per table."""

from ray_ser.public import lazy_api

__all__, __getattr__, __dir__ = lazy_api(__name__, {
    "config": ["StoreConfig"],
    "core": ["MANIFEST_CONDITION", "Store", "as_store", "embedding_schema", "iter_frames", "layer_filter", "now",
        "read_pooled_arrow"],
    "lease": ["Lease"],
    "names": ["sql_string", "table_name"],
    "status": ["read_status", "render"],
    "take": ["rows_dataset"],
})
