"""The store's config: where the embeddings and analysis tables live (the experiment config's ``store`` section)."""

from __future__ import annotations

from ray_ser.section import Section


class StoreConfig(Section):
    """Where the embeddings and analysis tables live."""

    uri: str = "store"
    """LanceDB store: a local folder (relative to where the command runs) or an object-store URI (s3://bucket/path,
    gs://, az://)."""
    options: dict[str, str | int | float | bool] = {}
    """Storage options of object-store URIs (the store's and run folders'), as LanceDB takes them: endpoint,
    region, allow_http, access_key_id, ... Unset ones come from the usual environment (AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP); keep secrets there, not in a file."""
