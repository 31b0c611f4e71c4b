"""The bad-input matrix: one corpus holding every fault a user's data can have, next to good files.

Each faulty file or manifest row must end as exactly one named ``errors`` row (its file and a reason that says
what to fix) while the job completes and every good utterance is stored exactly once. The matrix is printed
in the test output (and listed in the README's store section).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from speech_like import speech_like
from test_extract import assert_exactly_once, store_rows

from ray_ser.corpora import build_manifest
from ray_ser.extract.program import ExtractConfig, extract
from ray_ser.store.core import Store

WRITE_ONLY = ("/sys/bus/pci/rescan", "/sys/kernel/mm/ksm/run", "/sys/power/wakeup_count")


def unreadable(path: Path) -> str | None:
    """Make ``path`` a file this process cannot open; None when that is impossible here.

    chmod 000 stops any user but root; as root, a write-only sysfs attribute refuses reads with EACCES."""
    if os.geteuid() != 0:
        sf.write(path, speech_like(1.0, 16000), 16000)
        path.chmod(0)
        return "chmod 000"
    for target in WRITE_ONLY:
        path.unlink(missing_ok=True)
        os.symlink(target, path)
        try:
            open(path, "rb").close()
        except PermissionError:
            return f"symlink to write-only {target} (root reads any file)"
        except OSError:
            pass
    path.unlink(missing_ok=True)
    return None


# case, file name, expected stage, words the message must hold (what the user has to fix)
FILE_CASES = [
    ("corrupt header", "corrupt.wav", "decode", "corrupt audio header"),
    ("truncated file", "truncated.wav", "decode", "truncated"),
    ("empty file (0 bytes)", "zero.wav", "decode", "empty file"),
    ("empty audio (0 samples)", "no_samples.wav", "decode", "empty audio"),
    ("not an audio file", "notes.wav", "decode", "not an audio file"),
    ("NaN samples", "nan.wav", "decode", "NaN/Inf"),
    ("Inf samples", "inf.wav", "decode", "NaN/Inf"),
    ("all-zero audio", "silence.wav", "decode", "all zeros"),
    ("0.1 s", "short.wav", "decode", "too short"),
    ("10 min", "ten_minutes.flac", "decode", "audio too long"),
    ("missing file", "missing.wav", "decode", "file not found"),
    ("directory in place of a file", "folder.wav", "decode", "is a directory"),
    ("unreadable permissions", "locked.wav", "decode", "permission denied"),
]
GOOD = [("plain file", "plain.wav"), ("unicode in path", "Ängste – 情感 ü.wav"), ("spaces in path", "with  spaces in it.flac")]
# case, utt_id, how the CSV row is broken, words the message must hold
MANIFEST_CASES = [
    ("duplicate utt_id", "plain", {"path": "with  spaces in it.flac"}, "duplicate utt_id 'bad/plain' (first in row 1)"),
    ("missing speaker", "nospeaker", {"speaker": ""}, "empty speaker"),
    ("wrong type", "wrongtype", {"duration": "two seconds"}, "column 'duration' is not a number: 'two seconds'"),
    ("unknown label", "unknownlabel", {"label": "furious"}, "label 'furious' is not in the categories"),
    ("PDF not summing to 1", "badpdf", {"p_calm": "0.7", "p_excited": "0.7"}, "p_ columns sum to 1.4000, not 1"),
]


def write_files(folder: Path) -> dict[str, str]:
    """The faulty and the good files; returns case -> a note when a case could not be made here."""
    folder.mkdir(parents=True, exist_ok=True)
    speech = speech_like(1.5, 16000, seed=3)
    for name in ("plain.wav", "Ängste – 情感 ü.wav"):
        sf.write(folder / name, speech, 16000)
    sf.write(folder / "with  spaces in it.flac", speech_like(2.0, 22050, seed=4, channels=2), 22050)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    sf.write(folder / "full.wav", speech, 16000)
    data = (folder / "full.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(data[: len(data) // 2])
    (folder / "full.wav").unlink()
    (folder / "zero.wav").write_bytes(b"")
    sf.write(folder / "no_samples.wav", np.zeros(0, np.float32), 16000)
    (folder / "notes.wav").write_text("these are my notes, not audio\n" * 40)
    for name, value in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        bad = speech.copy()
        bad[500:510] = value
        sf.write(folder / name, bad, 16000, subtype="FLOAT")
    sf.write(folder / "silence.wav", np.zeros(16000, np.float32), 16000)
    sf.write(folder / "short.wav", speech[:1600], 16000)
    sf.write(folder / "ten_minutes.flac", np.tile(speech_like(1.0, 8000, seed=5), 600), 8000)
    (folder / "folder.wav").mkdir()
    notes = {}
    if unreadable(folder / "locked.wav") is None:
        notes["unreadable permissions"] = "cannot be made on this machine"
    return notes


def write_csv(folder: Path) -> Path:
    rows = [{"utt_id": Path(f).stem if c != "unicode in path" else "unicode", "path": f} for c, f in GOOD]
    rows += [{"utt_id": Path(f).stem, "path": f} for _, f, _, _ in FILE_CASES]
    rows += [{"utt_id": uid, "path": "plain.wav", **broken} for _, uid, broken, _ in MANIFEST_CASES]
    out = folder / "bad.csv"
    fields = ["utt_id", "path", "speaker", "label", "duration", "p_calm", "p_excited"]
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({"speaker": "spk1", "label": "calm", **r})
    return out


@pytest.fixture(scope="module")
def matrix_run(local_ray, tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad inputs")  # a space in every path, too
    notes = write_files(folder / "audio")
    manifest = build_manifest("csv", folder, csv=write_csv(folder / "audio"), categories=["calm", "excited"])
    uri = str(folder / "store")
    result = extract(manifest, uri, ExtractConfig(model=str(tiny_model_dir), conditions=["clean"], batch_size=4,
                                                   model_key="tiny", pool_size=1, dtype="float32"))
    return manifest, uri, result, notes, folder / "audio"


def test_bad_input_matrix(matrix_run, capsys):
    manifest, uri, result, notes, folder = matrix_run
    errors = Store(uri).errors().to_arrow().to_pylist()
    by_id: dict[str, list[dict]] = {}
    for e in errors:
        by_id.setdefault(e["utt_id"], []).append(e)
    table, failures = [], []
    for case, name, stage, words in FILE_CASES:
        got = by_id.get(f"bad/{Path(name).stem}", [])
        if case in notes:
            table.append((case, name, "skipped: " + notes[case]))
            continue
        ok = (len(got) == 1 and got[0]["stage"] == stage and words in got[0]["message"]
              and got[0]["path"] == str(folder / name) and got[0]["condition"] == "clean")
        table.append((case, name, f"{got[0]['stage']}: {got[0]['message']}" if got else "NO ERROR ROW"))
        failures += [] if ok else [case]
    for case, uid, _, words in MANIFEST_CASES:
        got = [e for e in by_id.get(f"bad/{uid}", []) if e["stage"] == "manifest"]
        ok = len(got) == 1 and words in got[0]["message"] and "bad.csv row" in got[0]["message"] and got[0]["condition"] == "*"
        table.append((case, f"bad.csv ({uid})", f"manifest: {got[0]['message'].split(': ', 1)[1]}" if got else "NO ERROR ROW"))
        failures += [] if ok else [case]
    good_ids = ["bad/plain", "bad/unicode", "bad/with  spaces in it"]
    for (case, name), uid in zip(GOOD, good_ids):
        failed = [e for e in by_id.get(uid, []) if e["stage"] != "manifest"]  # bad/plain also names the duplicate
        table.append((case, name, "extracted" if not failed else f"ERROR: {failed}"))
    with capsys.disabled():
        width = max(len(r[0]) for r in table)
        print(f"\n\nbad-input matrix ({len(table)} cases; errors table rows: stage: message)")
        for case, name, outcome in table:
            print(f"  {case:<{width}}  {name:<28} {outcome}")
        print(f"  -> extracted {result.extracted}, errors {result.errors}, manifest rows left out "
              f"{result.manifest_errors}\n")
    assert not failures, f"cases without their named error row: {failures}"
    n_file_errors = sum(1 for c in FILE_CASES if c[0] not in notes)
    assert (result.extracted, result.errors, result.manifest_errors) == (3, n_file_errors, len(MANIFEST_CASES))
    assert len(errors) == n_file_errors + len(MANIFEST_CASES)  # nothing else failed, nothing recorded twice
    assert_exactly_once(store_rows(uri, "tiny"), good_ids, ["clean"], num_layers=3)


def test_manifest_keeps_unreadable_files_with_a_null_duration(matrix_run):
    manifest = matrix_run[0]
    problems = {uid.split("/", 1)[1]: reason for uid, _, reason in manifest.audio_problems()}
    assert problems["corrupt"].startswith("corrupt audio header") and problems["folder"].startswith("is a directory")
    assert problems["truncated"].startswith("truncated") and problems["zero"] == "empty file (0 bytes)"
    durations = dict(zip(manifest.column("utt_id"), manifest.column("duration")))
    assert all(durations[f"bad/{k}"] is None for k in problems)
    assert durations["bad/ten_minutes"] == pytest.approx(600.0) and durations["bad/missing"] is None


def test_rerun_records_nothing_twice(matrix_run, tiny_model_dir):
    manifest, uri, first, notes, _ = matrix_run
    again = extract(manifest, uri, ExtractConfig(model=str(tiny_model_dir), conditions=["clean"], batch_size=4,
                                                  model_key="tiny", pool_size=1, dtype="float32"))
    assert (again.extracted, again.errors, again.done_before, again.failed_before) == (0, 0, 3, first.errors)
    assert Store(uri).errors().count_rows() == first.errors + len(MANIFEST_CASES)
