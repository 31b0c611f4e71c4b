"""Faults during extraction: a model actor killed mid-run, and a driver killed in the middle of a commit.

Both end with every (utterance, condition, layer) row stored exactly once; the figures (rows expected /
written / duplicated) are printed in the test output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from speech_like import Clip, write_corpus

from ray_ser.corpora import build_manifest
from ray_ser.extract.program import ExtractConfig, extract
from ray_ser.store.core import Store
from ray_ser.store.names import table_name

CONDS = ["clean", "5dB"]
CLIPS = tuple(Clip(f"u{i:02d}", 1.0 + (i % 7) * 0.5, (8000, 16000, 22050)[i % 3], 1 + i % 2) for i in range(48))


def figures(uri: str, key: str, utt_ids, conds, num_layers: int = 3) -> dict[str, int]:
    """Rows expected, written (distinct keys present), duplicated (extra copies) and missing."""
    t = Store(uri).embeddings(key).to_lance().to_table(columns=["utt_id", "condition", "layer"])
    keys = list(zip(*(t.column(k).to_pylist() for k in ("utt_id", "condition", "layer"))))
    expected = {(u, c, layer) for u in utt_ids for c in conds for layer in range(num_layers)}
    return {"expected": len(expected), "written": len(set(keys) & expected), "duplicated": len(keys) - len(set(keys)),
            "missing": len(expected - set(keys)), "stray": len(set(keys) - expected)}


def report(capsys, title: str, numbers: dict) -> None:
    with capsys.disabled():
        print(f"\n{title}: " + ", ".join(f"{k} {v}" for k, v in numbers.items()))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    csv = write_corpus(tmp_path_factory.mktemp("faults"), CLIPS)
    return build_manifest("csv", csv.parent, csv=csv)


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line of every live process below ``root`` (from /proc: only this test's own processes)."""
    parent, cmd = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
    out = {}
    for pid in parent:
        p, seen = pid, 0
        while p in parent and p != root and seen < 64:
            p, seen = parent[p], seen + 1
        if p == root and pid != root:
            out[pid] = cmd[pid]
    return out


def test_actor_killed_mid_run_is_restarted_and_every_row_written_once(local_ray, corpus, tiny_model_dir, tmp_path,
                                                                        capsys):
    uri = str(tmp_path / "store")
    name = table_name("tiny")
    seen: set[int] = set()
    killed: list[int] = []
    done = threading.Event()

    def killer() -> None:
        """Once the first rows are committed, SIGKILL one model actor; keep noting actor pids (restarts)."""
        while not done.is_set():
            actors = {pid for pid, cmd in _descendants(os.getpid()).items() if "EmbedStage" in cmd}
            seen.update(actors)
            if not killed and actors:
                store = Store(uri) if Path(uri).exists() else None
                if store is not None and store.has(name) and store.open(name).count_rows() > 0:
                    victim = min(actors)
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        result = extract(corpus, uri, ExtractConfig(model=str(tiny_model_dir), conditions=CONDS, batch_size=2,
                                                     model_key="tiny", commit_seconds=0, pool_size=2, dtype="float32"))
    finally:
        done.set()
        thread.join()
    numbers = figures(uri, "tiny", corpus.column("utt_id"), CONDS)
    report(capsys, "actor killed mid-run", {**numbers, "actors killed": len(killed),
                                            "actor processes seen": len(seen), "errors": result.errors})
    assert killed, "the run finished before an actor could be killed: give it more work"
    assert len(seen) > 2, "no replacement actor was started"
    assert numbers == {"expected": len(CLIPS) * 2 * 3, "written": len(CLIPS) * 2 * 3, "duplicated": 0, "missing": 0,
                       "stray": 0}
    assert result.extracted == len(CLIPS) * 2 and result.errors == 0


DRIVER = textwrap.dedent("""
    import os, sys, time
    import lancedb.table
    import pyarrow as pa
    import ray
    from lance.fragment import write_fragments
    from ray_ser.corpora import Manifest
    from ray_ser.extract.program import ExtractConfig, extract

    manifest_path, uri, model, pause_at, markers = sys.argv[1:6]
    add, count = lancedb.table.LanceTable.add, [0]

    def add_that_stops_inside(self, data, *args, **kwargs):
        # Lance's add writes the data files, then commits a manifest naming them. At commit number ``pause_at`` of
        # the emb table this stand-in does the first step with Lance's public API and stops before the second,
        # so the kill lands inside the commit every time (not by a race with the parent's polling).
        if not self.name.startswith("emb__"):
            return add(self, data, *args, **kwargs)
        count[0] += 1
        if count[0] != int(pause_at):
            return add(self, data, *args, **kwargs)
        ds = self.to_lance()
        written = write_fragments(pa.Table.from_batches(data.to_batches()), ds.uri, schema=ds.schema)
        open(os.path.join(markers, "inside-commit"), "w").write(str(sum(f.physical_rows for f in written)))
        time.sleep(3600)

    lancedb.table.LanceTable.add = add_that_stops_inside
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    extract(Manifest.read(manifest_path), uri, ExtractConfig(model=model, conditions=["clean", "5dB"], batch_size=4,
            model_key="tiny", commit_seconds=0, pool_size=1, dtype="float32"))
    print("finished", flush=True)
""")


def _run_driver(script: Path, args: list[str], markers: Path, pause_at: int, timeout: float = 600):
    """Run the driver; SIGKILL its whole process group once it is inside commit ``pause_at`` (0: never).

    Returns (finished normally, rows it had written to data files of the unfinished commit, output tail)."""
    markers.mkdir(parents=True, exist_ok=True)
    for f in markers.iterdir():
        f.unlink()
    proc = subprocess.Popen([sys.executable, str(script), *args, str(pause_at), str(markers)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    inside = markers / "inside-commit"
    deadline = time.time() + timeout
    try:
        if not pause_at:
            out, _ = proc.communicate(timeout=timeout)
            return "finished" in out, 0, out[-3000:]
        while not (inside.exists() and inside.read_text()):
            if proc.poll() is not None or time.time() > deadline:  # ended (or hung) before that commit: say why
                code = proc.poll()
                if code is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                why = f"exited {code}" if code is not None else f"no commit {pause_at} in {timeout:.0f} s"
                return code == 0, 0, f"driver {why}: {proc.stdout.read()[-3000:]}"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        proc.wait()
        return False, int(inside.read_text()), ""
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        for pid in _descendants(proc.pid):  # nothing of it may outlive the test (none should: same group)
            os.kill(pid, signal.SIGKILL)


def orphan_files(uri: str, key: str) -> int:
    """Data files on disk that no committed fragment names: what a commit cut short leaves behind."""
    ds = Store(uri).embeddings(key).to_lance()
    named = {Path(f.path).name for frag in ds.get_fragments() for f in frag.data_files()}
    return sum(1 for f in (Path(ds.uri) / "data").iterdir() if f.name not in named)


def test_driver_killed_during_a_commit_loses_and_duplicates_nothing(corpus, tiny_model_dir, tmp_path, capsys):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    uri = str(tmp_path / "store")
    corpus = corpus.head(24)  # 3 commits of 8 utterances x 2 conditions
    args = [str(corpus.write(tmp_path / "manifest.parquet")), uri, str(tiny_model_dir)]
    finished, uncommitted, out = _run_driver(script, args, tmp_path / "markers", pause_at=2)
    assert not finished and uncommitted > 0, out
    at_kill = figures(uri, "tiny", corpus.column("utt_id"), CONDS)
    orphans = orphan_files(uri, "tiny")
    assert orphans >= 1  # the cut commit's data files are on disk, unseen by any reader
    assert Store(uri).scan_keys("tiny", 3).partial == set()  # whole commits only: no utterance with half its layers
    assert at_kill["duplicated"] == 0 and 0 < at_kill["written"] < at_kill["expected"]
    finished, _, out = _run_driver(script, args, tmp_path / "markers", pause_at=0)  # the re-run takes the dead lease
    assert finished, out
    numbers = figures(uri, "tiny", corpus.column("utt_id"), CONDS)
    report(capsys, "driver killed during a commit", {
        "rows in the cut commit's data files": uncommitted, "orphan data files": orphans,
        "rows visible after the kill": at_kill["written"], **numbers})
    assert numbers["written"] == numbers["expected"] and numbers["duplicated"] == numbers["stray"] == 0
