"""The store: LanceDB tables of embeddings, manifests, errors and runs (core), the catalog of analysis tables,
and the leases that keep one writer per table."""
