"""The weight-hash cache: same answer as hashing the bytes, and a changed file is hashed again."""

from __future__ import annotations

import hashlib
import os

from ray_ser.fm import hashing


def test_hash_equals_sha256_of_concatenation_and_is_cached(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 1000)
    b.write_bytes(b"y" * 10)
    want = hashlib.sha256(b"x" * 1000 + b"y" * 10).hexdigest()
    assert hashing.cached([a, b]) is None
    assert hashing.files_sha256([a, b]) == want
    assert hashing.cached([a, b]) == want
    assert hashing.cached([b, a]) is None  # order is part of the identity


def test_rewritten_file_is_hashed_again(tmp_path):
    a = tmp_path / "w.safetensors"
    a.write_bytes(b"old")
    first = hashing.files_sha256([a])
    a.write_bytes(b"new")
    os.utime(a, ns=(0, os.stat(a).st_mtime_ns + 10**9))  # a later mtime even on coarse clocks
    assert hashing.files_sha256([a]) == hashlib.sha256(b"new").hexdigest() != first


def test_unwritable_cache_is_only_a_lost_speedup(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("RAY_SER_CACHE", str(blocker / "sub"))
    a = tmp_path / "a.bin"
    a.write_bytes(b"abc")
    assert hashing.files_sha256([a]) == hashlib.sha256(b"abc").hexdigest()
