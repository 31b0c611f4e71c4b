"""The radosgw fixture is a real S3 store for our stack: LanceDB and pylance write, read and commit concurrently."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import lance
import lancedb
import pyarrow as pa
import pytest

from services.rgw import free_port


def _keys(gw, prefix: str) -> list[str]:
    status, _, body = gw.request("GET", f"/{gw.bucket}?list-type=2&prefix={prefix}")
    assert status == 200, body
    return [part.split("</Key>")[0] for part in body.decode().split("<Key>")[1:]]


def test_lancedb_table_round_trip(rgw):
    db = lancedb.connect(rgw.uri("roundtrip"), storage_options=rgw.storage_options())
    table = db.create_table("emb", pa.table({"id": [0, 1, 2], "x": [[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]]}))
    table.add(pa.table({"id": [3], "x": [[3.0, 4.0]]}))

    again = lancedb.connect(rgw.uri("roundtrip"), storage_options=rgw.storage_options())
    assert "emb" in again.list_tables().tables
    got = again.open_table("emb").to_arrow().sort_by("id")
    assert got["id"].to_pylist() == [0, 1, 2, 3]
    assert got["x"].to_pylist()[3] == [3.0, 4.0]
    assert any(k.endswith(".lance") for k in _keys(rgw, "roundtrip/emb.lance/data/"))  # the bytes are in the bucket


def test_conditional_put_is_honoured(rgw):
    """Lance commits a version with PUT If-None-Match: * and relies on a 412 when the version already exists."""
    key = f"/{rgw.bucket}/conditional/once"
    assert rgw.request("PUT", key, b"first", {"If-None-Match": "*"})[0] == 200
    assert rgw.request("PUT", key, b"second", {"If-None-Match": "*"})[0] == 412
    assert rgw.request("GET", key)[2] == b"first"


def test_concurrent_lance_appends_all_land(rgw):
    uri, opts = rgw.uri("concurrent", "ds.lance"), rgw.storage_options()
    lance.write_dataset(pa.table({"id": [-1]}), uri, storage_options=opts)
    writers, appends = 4, 3
    start = threading.Barrier(writers)

    def append(w: int) -> None:
        start.wait()
        for i in range(appends):
            lance.write_dataset(pa.table({"id": [w * 100 + i]}), uri, mode="append", storage_options=opts)

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(append, range(writers)))

    ds = lance.dataset(uri, storage_options=opts)
    assert ds.version == 1 + writers * appends
    expected = [-1] + [w * 100 + i for w in range(writers) for i in range(appends)]
    assert sorted(ds.to_table()["id"].to_pylist()) == expected


@pytest.mark.parametrize("fault", ["wrong secret", "closed port"])
def test_bad_store_options_fail_fast(rgw, fault):
    """Measured on 2 cores: a wrong secret fails in ~2 s (403, no object_store retries, but LanceDB lists three
    times); a closed port in ~5 s (object_store retries connection errors 3 times, LanceDB again three times)."""
    opts = rgw.storage_options()
    if fault == "wrong secret":
        opts["secret_access_key"] = "not-the-secret"
    else:
        opts["endpoint"] = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(Exception, match="403|SignatureDoesNotMatch" if fault == "wrong secret" else "onnect"):
        lancedb.connect(rgw.uri("denied"), storage_options=opts).create_table("t", pa.table({"a": [1]}))
    assert time.monotonic() - t0 < 30
