"""ray_ser.console: library logs to the run's log file, our warnings and every error to the console, one line per
stage start and end, sparse progress off a terminal. No Ray is started."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_ser import console

PROJECT = Path(__file__).resolve().parents[1]
TOUCHED_ENV = (console.VERBOSE_ENV, "LANCE_LOG_FILE", *console.QUIET_ENV)


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """Each test starts unconfigured and leaves logging, env and Ray Data's switches as it found them."""
    for key in TOUCHED_ENV:  # monkeypatch records each value and restores it after the test
        monkeypatch.delenv(key, raising=False)
    console.reset()
    yield
    console.reset()


def flush() -> None:
    for h in logging.getLogger().handlers:
        h.flush()


def test_library_info_goes_to_the_file_not_the_console(tmp_path, capfd):
    path = console.setup(tmp_path, verbose=False, native_stderr=False)
    logging.getLogger("ray").info("Started a local Ray instance")
    logging.getLogger("ray.data").warning("Progress bars disabled")
    flush()
    out, err = capfd.readouterr()
    assert path == tmp_path.resolve() / console.LOG_NAME
    assert "Started a local Ray instance" not in out + err and "Progress bars disabled" not in out + err
    text = path.read_text()
    assert "INFO ray: Started a local Ray instance" in text and "WARNING ray.data: Progress bars disabled" in text


def test_our_warnings_and_every_error_reach_the_console(tmp_path, capfd):
    path = console.setup(tmp_path, verbose=False, native_stderr=False)
    logging.getLogger("ray_ser.extract.program").warning("failed u1 (/data/u1.wav): truncated file")
    try:
        raise RuntimeError("inner detail")
    except RuntimeError:
        logging.getLogger("ray.data").exception("actors died during initialization\nsecond line")
    flush()
    out, err = capfd.readouterr()
    assert "WARNING: failed u1 (/data/u1.wav): truncated file" in err
    assert "ERROR: actors died during initialization" in err
    assert "second line" not in err and "inner detail" not in err  # a library's error: its first line only ...
    text = path.read_text()
    assert "second line" in text and "inner detail" in text  # ... the whole record is in the file


def test_verbose_shows_info_on_the_console(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    console.setup(tmp_path)
    assert console.is_verbose()
    logging.getLogger("ray").info("Started a local Ray instance")
    flush()
    assert "Started a local Ray instance" in capfd.readouterr().err
    assert console.ray_init_kwargs() == {"log_to_driver": True}
    assert not console.route_worker_logs()


def test_quiet_switches_and_init_kwargs(tmp_path):
    assert console.ray_init_kwargs(verbose=False)["log_to_driver"] is False  # no log file: Ray's session logs
    path = console.setup(tmp_path, verbose=False, native_stderr=False)
    assert os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1" and os.environ["LANCE_LOG_FILE"] == str(path)
    from ray.data import DataContext

    assert DataContext.get_current().enable_progress_bars is False
    kwargs = console.ray_init_kwargs()
    assert kwargs["log_to_driver"] is True  # workers' lines reach the driver only to be written to the file
    console.reset()
    assert "RAY_DATA_DISABLE_PROGRESS_BARS" not in os.environ and "LANCE_LOG_FILE" not in os.environ
    assert DataContext.get_current().enable_progress_bars is True


def test_worker_lines_go_to_the_file(tmp_path, capfd):
    path = console.setup(tmp_path, verbose=False, native_stderr=False)
    console._worker_lines({"pid": 4242, "actor_name": "MapWorker(EmbedStage)", "lines": ["Loading weights", ""],
                           "ip": "10.0.0.1", "localhost": "10.0.0.1"})
    console._worker_lines({"pid": "autoscaler", "lines": ["======== Autoscaler status ========", "Node status"]})
    flush()
    out, err = capfd.readouterr()
    assert out + err == ""
    text = path.read_text()
    assert "(MapWorker(EmbedStage) pid=4242) Loading weights" in text
    assert "Autoscaler status" not in text  # its periodic status is dropped, as Ray's own printer does


def test_setup_twice_replaces_its_handlers(tmp_path, capfd):
    console.setup(tmp_path / "a", verbose=False, native_stderr=False)
    path = console.setup(tmp_path / "b", verbose=False, native_stderr=False)
    ours = [h for h in logging.getLogger().handlers if getattr(h, console._TAG, False)]
    assert len(ours) == 2  # one file, one console
    logging.getLogger("ray_ser.x").warning("once")
    flush()
    assert capfd.readouterr().err.count("once") == 1
    assert path.read_text().count("once") == 1 and "once" not in (tmp_path / "a" / console.LOG_NAME).read_text()
    ray_logger = logging.getLogger("ray")
    assert ray_logger.propagate  # Ray's own console handler stays off, its records go to ours
    assert not [h for h in ray_logger.handlers if type(h).__name__ == "PlainRayHandler"]
    console.reset()
    assert not [h for h in logging.getLogger().handlers if getattr(h, console._TAG, False)]


def test_stage_prints_one_line_at_start_and_one_at_end(capsys):
    with console.stage("extract"):
        pass
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0] == "[stage] extract ..." and lines[1].startswith("[done] extract (")
    with pytest.raises(ValueError, match="truncated"):
        with console.stage("train"):
            raise ValueError("/data/u1.wav: truncated\ndetails")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("[failed] train after ")
    assert lines[1].endswith("ValueError: /data/u1.wav: truncated")


def test_progress_off_a_terminal_prints_a_few_plain_lines(capsys):
    bar = console.progress(500, "extract", "utt")
    for i in range(500):
        bar.update(1)
        bar.set_postfix_str(f"{i} failed")
    console.say("a result line")
    bar.close()
    out, err = capsys.readouterr()
    assert out == "a result line\n"
    lines = err.splitlines()
    assert 1 <= len(lines) <= 3 and "\r" not in err
    assert "500/500" in lines[-1] and "utt/s" in lines[-1]


def test_fmt_seconds():
    assert [console.fmt_seconds(s) for s in (3.21, 83, 7500)] == ["3.2s", "1m 23s", "2h 05m"]


def test_native_stderr_goes_to_the_file(tmp_path):
    """In a process of its own (pytest holds this one's stderr): fd 2 -> the file, sys.stderr -> the terminal."""
    code = ("import os, sys, logging\n"
            "from ray_ser import console\n"
            f"console.setup({str(tmp_path)!r}, verbose=False)\n"
            "os.write(2, b'[WARN lance] No existing dataset\\n')\n"
            "logging.getLogger('ray_ser.x').warning('our warning')\n"
            "print('python stderr', file=sys.stderr)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert run.returncode == 0, run.stderr
    assert "our warning" in run.stderr and "python stderr" in run.stderr
    assert "No existing dataset" not in run.stderr
    assert "No existing dataset" in (tmp_path / console.LOG_NAME).read_text()


# ---- what the stages' bars count ---------------------------------------------------------------------------
def test_extraction_bar_counts_utterance_condition_pairs():
    import pyarrow as pa

    from ray_ser.extract.program import pairs_in

    layers = pa.table({"layer": pa.array([0, 1, 2, 0, 1, 2, -1], pa.int16())})  # 2 extracted (3 layers), 1 failed
    assert pairs_in(layers) == 3
    record = pa.table({"layer": pa.array([-1, -2], pa.int16()), "extracted": pa.array([None, 5], pa.int64())})
    assert pairs_in(record) == 6  # write mode "fragments": a failure, and a record of 5 written by the actor


def test_fold_bar_reads_the_workers_epoch(tmp_path):
    import time

    from ray_ser.train.config import TrainConfig
    from ray_ser.train.driver import epoch_note, watch_progress
    from ray_ser.train.loop import write_progress

    cfg = TrainConfig(epochs=30)
    plan = type("Plan", (), {"cv_val": None})()
    path = tmp_path / "fold_3" / "progress.json"
    write_progress(path, {"epoch": 0}, {"phase": "select"}, cfg, plan)
    assert not path.parent.exists()  # only into the driver's existing run folder
    path.parent.mkdir()
    seen = []
    with watch_progress(path, seen.append, interval=0.05):
        write_progress(path, {"epoch": 4}, {"phase": "select"}, cfg, plan)
        deadline = time.time() + 5
        while not seen and time.time() < deadline:
            time.sleep(0.05)
    assert epoch_note(3, seen[-1]) == "fold 3: epoch 5/30"
    assert epoch_note(3, {"phase": "refit", "epoch": 2, "epochs": 12}) == "fold 3: refit epoch 2/12"
    assert epoch_note(3, {"phase": "cv", "epoch": 1, "epochs": 30, "inner_fold": 0, "inner_folds": 3}) == \
        "fold 3: inner 1/3 epoch 1/30"
