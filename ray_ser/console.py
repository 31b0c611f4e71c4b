"""A calm console: one line per stage start and end, a live progress bar per long stage, the result lines, and the
warnings and errors a user must act on. Ray's, Lance's and the workers' logs go to ``<run folder>/ray_ser.log``;
``--verbose`` or ``RAY_SER_VERBOSE=1`` shows them on the console too.

Call :func:`setup` first (before Ray starts); :func:`ray_init_kwargs` and :func:`route_worker_logs` are what
:func:`ray_ser.runtime.init_ray` adds to ``ray.init``; :func:`stage`, :func:`progress` and :func:`say` are what
drivers print with."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Iterator

from ray_ser.redaction import ScrubFilter, remember_environment, scrub

LOG_NAME = "ray_ser.log"
VERBOSE_ENV = "RAY_SER_VERBOSE"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

OWN_LOGGERS = ("ray_ser", "__main__", "root", "jobs")
"""Loggers whose warnings reach the console (errors of any logger always do)."""
NOISY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "lance", "pylance", "lancedb", "urllib3",
                 "filelock", "fsspec", "py.warnings", "torch", "transformers", "huggingface_hub", "optuna",
                 "matplotlib", "PIL", "tensorboardX", "asyncio", "numba")
"""Third-party loggers: their console handlers are removed and their records go to the log file (the console shows
only their errors, all of them when verbose)."""

QUIET_ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # Ray Data's per-operator bars, also in workers (Train, Tune trials)
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's legacy reporter is silent at verbose=0; the new one still prints a start box
}
"""Process-wide switches set when not verbose; inherited by the Ray processes a local ``ray.init`` starts."""

_TAG = "_ray_ser_console"
_bars: "weakref.WeakSet" = weakref.WeakSet()  # open progress bars, closed by a failing stage
_state: dict[str, Any] = {"configured": False, "verbose": False, "log_file": None, "env": {}, "loggers": {}, "details": True,
                          "stderr": None, "data_context": None, "root_level": None}


def _env_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def is_verbose(verbose: bool | None = None) -> bool:
    """``verbose`` when given, else what :func:`setup` chose, else ``$RAY_SER_VERBOSE``."""
    if verbose is not None:
        return bool(verbose)
    return _state["verbose"] if _state["configured"] else _env_verbose()


def log_file() -> Path | None:
    """The log file :func:`setup` writes to (None: not set up, or no log folder)."""
    return _state["log_file"]


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _fancy(stream) -> bool:
    """Unicode marks only on a terminal that takes them; plain ASCII in logs and pipes."""
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return _is_tty(stream) and encoding.startswith("utf")


# ---- logging ----------------------------------------------------------------------------------------------
class _ConsoleFilter(logging.Filter):
    """Not verbose: our own loggers' warnings and every logger's errors. Verbose: everything at INFO and above."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose or record.levelno >= logging.ERROR:
            return True
        name = record.name
        return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


class _ConsoleHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (looked up at each record), above any progress bar."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the current sys.stderr is always used
        pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _write(self.format(record), sys.stderr)
        except Exception:
            self.handleError(record)


class _ConsoleFormatter(logging.Formatter):
    """``LEVEL: message``; a library's record (its errors reach the console) shows its first line only, without
    the traceback: the full record is in the log file, and the exception itself reaches the caller."""

    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        if any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS):
            return super().format(record)
        lines = record.getMessage().strip().splitlines() or [""]
        more = len(lines) > 1 or record.exc_info or record.stack_info
        where = f" (more in {_state['log_file']})" if more and _state["log_file"] is not None else ""
        return f"{record.levelname}: {lines[0]}{where}"


def _write(text: str, stream) -> None:
    """A line to ``stream`` without tearing an open progress bar (tqdm clears and redraws it)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with ray and transformers
        print(text, file=stream, flush=True)
        return
    tqdm.write(text, file=stream)
    with contextlib.suppress(Exception):
        stream.flush()


def _quiet_logger(name: str) -> None:
    """Drop a library logger's console handlers and let its records propagate to the root (the log file);
    the original handlers are kept so :func:`reset` can put them back."""
    logger = logging.getLogger(name)
    if name not in _state["loggers"]:
        _state["loggers"][name] = (list(logger.handlers), logger.propagate)
    for h in list(logger.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            logger.removeHandler(h)
    logger.propagate = True


def quiet_libraries() -> None:
    """Again drop the console handlers of :data:`NOISY_LOGGERS` (when not verbose, their records still reach the
    file): for a library that installs one when it is imported (optuna), after that import."""
    if _state["configured"]:
        for name in NOISY_LOGGERS:
            _quiet_logger(name)


def _set_env(values: dict[str, str]) -> None:
    for key, value in values.items():
        if key not in _state["env"]:
            _state["env"][key] = os.environ.get(key)
        os.environ[key] = value


def _restore_env() -> None:
    for key, old in _state["env"].items():
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
    _state["env"] = {}


def _ray_data_progress(show: bool) -> None:
    """Ray Data's progress bars in this process (the env switch covers processes started later)."""
    try:
        from ray.data import DataContext
    except Exception:  # ray.data not installed or broken: nothing to switch
        return
    ctx = DataContext.get_current()
    if _state["data_context"] is None:
        _state["data_context"] = (ctx.enable_progress_bars, ctx.enable_operator_progress_bars)
    ctx.enable_progress_bars = show
    ctx.enable_operator_progress_bars = show


def redirect_native_stderr(path: str | Path) -> bool:
    """Point file descriptor 2 at ``path`` so what native code writes there (Ray's C++ core worker, Lance's Rust
    logger, child processes) lands in the log; ``sys.stderr`` keeps writing to the terminal. Only when
    ``sys.stderr`` is still the process's own (not under pytest's capture); returns whether it did."""
    if _state["stderr"] is not None:
        restore_native_stderr()
    if sys.stderr is None or sys.stderr is not sys.__stderr__:
        return False
    try:
        fd = sys.__stderr__.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False
    sys.stderr.flush()
    saved = os.dup(fd)
    terminal = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb"), encoding=sys.__stderr__.encoding or "utf-8",
                                errors="backslashreplace", line_buffering=True, write_through=True)
    target = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, fd)
    os.close(target)
    _state["stderr"] = (fd, saved, terminal)
    sys.stderr = terminal
    return True


def restore_native_stderr() -> None:
    """Undo :func:`redirect_native_stderr`."""
    if _state["stderr"] is None:
        return
    fd, saved, terminal = _state["stderr"]
    _state["stderr"] = None
    with contextlib.suppress(Exception):
        terminal.flush()
    os.dup2(saved, fd)
    os.close(saved)
    if sys.stderr is terminal:
        sys.stderr = sys.__stderr__
    with contextlib.suppress(Exception):
        terminal.close()


def reset() -> None:
    """Undo :func:`setup`: our handlers, the library loggers' handlers, env switches, fd 2, Ray Data's bars."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _TAG, False):
            root.removeHandler(h)
            h.close()
    for name, (handlers, propagate) in _state["loggers"].items():
        logger = logging.getLogger(name)
        for h in handlers:
            if h not in logger.handlers:
                logger.addHandler(h)
        logger.propagate = propagate
    _state["loggers"] = {}
    if _state["root_level"] is not None:
        root.setLevel(_state["root_level"])
        _state["root_level"] = None
    logging.captureWarnings(False)
    _restore_env()
    restore_native_stderr()
    if _state["data_context"] is not None:
        with contextlib.suppress(Exception):
            from ray.data import DataContext

            ctx = DataContext.get_current()
            ctx.enable_progress_bars, ctx.enable_operator_progress_bars = _state["data_context"]
        _state["data_context"] = None
    _state.update(configured=False, verbose=False, log_file=None)


def setup(log_dir: str | Path | None, verbose: bool | None = None, *, native_stderr: bool = True) -> Path | None:
    """Route logging: everything at INFO to ``<log_dir>/ray_ser.log``, the console only our warnings and all
    errors (everything when ``verbose``, default ``$RAY_SER_VERBOSE``). Call before Ray starts; calling again
    replaces the previous set-up. Returns the log file (None without ``log_dir``).

    Not verbose, it also turns Ray Data's progress bars off, sends Lance's Rust log to the file
    (``LANCE_LOG_FILE``, for processes that load Lance later), and with ``native_stderr`` points fd 2 at the file
    (:func:`redirect_native_stderr`) so native libraries' stderr lines land there too."""
    reset()
    remember_environment()  # AWS_SECRET_ACCESS_KEY and the like: masked in every line from here on
    verbose = _env_verbose() if verbose is None else bool(verbose)
    path = None
    root = logging.getLogger()
    _state["root_level"] = root.level
    root.setLevel(logging.INFO)
    if log_dir is not None:
        from ray_ser.storage import is_uri, local_log_dir

        if is_uri(log_dir):  # a run folder on an object store: the driver's log stays on this machine
            log_dir = local_log_dir(log_dir)
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        path = Path(log_dir).resolve() / LOG_NAME
        fh = logging.FileHandler(path, encoding="utf-8")
        fh.setLevel(logging.INFO)
        fh.setFormatter(logging.Formatter(FILE_FORMAT))
        fh.addFilter(ScrubFilter())
        setattr(fh, _TAG, True)
        root.addHandler(fh)
    console = _ConsoleHandler()
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    console.addFilter(_ConsoleFilter(verbose))
    console.addFilter(ScrubFilter())  # after the level filter: a secret known to this process never prints
    console.setFormatter(logging.Formatter(FILE_FORMAT) if verbose else _ConsoleFormatter("%(levelname)s: %(message)s"))
    setattr(console, _TAG, True)
    root.addHandler(console)
    logging.captureWarnings(True)  # warnings.warn -> "py.warnings" logger -> the file (console when verbose)
    _ray_data_progress(verbose)  # imports ray.data first: its import configures its logger, quietened next
    for name in NOISY_LOGGERS:
        _quiet_logger(name)
    _state.update(configured=True, verbose=verbose, log_file=path)
    if not verbose:
        _set_env(QUIET_ENV)
        if path is not None:
            _set_env({"LANCE_LOG_FILE": str(path)})
    if not verbose and path is not None and native_stderr:
        redirect_native_stderr(path)
    if path is not None:
        logging.getLogger(__name__).info("ray_ser log (verbose=%s, pid %d): %s", verbose, os.getpid(), " ".join(sys.argv))
    return path


# ---- Ray ---------------------------------------------------------------------------------------------------
def _dispatcher():
    """Ray's driver-side dispatcher of workers' output lines (a private hook; None when this Ray lacks it)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as d
    except Exception:
        return None
    return d if hasattr(d, "add_handler") and hasattr(d, "remove_handler") else None


def ray_init_kwargs(verbose: bool | None = None) -> dict:
    """Extra ``ray.init`` kwargs for the console: verbose, Ray's defaults (workers' output on the terminal).
    Otherwise workers' output reaches the driver only to be written to the log file by :func:`route_worker_logs`
    (call it right after ``ray.init``; ``runtime.init_ray`` does); without a log file (or the hook) it stays in
    Ray's session logs (``log_to_driver=False``). Ray's driver-side records go to the root logger (the file)."""
    if is_verbose(verbose):
        return {"log_to_driver": True}
    capture = _state["configured"] and _state["log_file"] is not None and _dispatcher() is not None
    return {"log_to_driver": capture, "logging_level": logging.INFO}


def _worker_lines(data: dict) -> None:
    """One batch of a worker's (or the raylet's, or the autoscaler's) output lines -> the log file. Of the
    autoscaler's periodic status, only its events are kept, as Ray's own printer does; its warnings (a resource
    request no node can meet: the job would wait forever) reach the console."""
    lines = data.get("lines") or []
    pid = data.get("pid")
    ip = data.get("ip")
    where = f", ip={ip}" if ip and ip != data.get("localhost") else ""
    if pid == "autoscaler":
        try:
            from ray._private.worker import filter_autoscaler_events

            events = list(filter_autoscaler_events(lines))
        except Exception:  # no such hook, or no Ray connection to tell the autoscaler's version
            events = []
        for line in events:
            level = logging.WARNING if ("Warning" in line or "Error" in line) else logging.INFO
            logging.getLogger("ray_ser.autoscaler").log(level, "(autoscaler%s) %s", where, line)
        return
    logger = logging.getLogger("ray.workers")
    who = data.get("actor_name") or data.get("task_name") or ""
    prefix = f"({who + ' ' if who else ''}pid={pid}{where})"
    for line in lines:
        if line.strip() and "__ray_tqdm_magic_token__" not in line:  # tqdm_ray's bar updates: not for a log
            logger.info("%s %s", prefix, line)


def route_worker_logs(verbose: bool | None = None) -> bool:
    """After ``ray.init(log_to_driver=True)``: workers' output lines go to the log file instead of the terminal
    (verbose: left on the terminal). Errors still reach the driver as exceptions (a task's or an actor's
    traceback), and Ray's raylet error messages (a worker killed, out of memory) still print. Returns whether it
    rerouted."""
    if is_verbose(verbose) or _state["log_file"] is None:
        return False
    d = _dispatcher()
    if d is None:
        return False
    d.remove_handler("ray_print_logs")
    d.remove_handler("ray_ser_log")
    d.add_handler("ray_ser_log", _worker_lines)
    return True


# ---- the console ------------------------------------------------------------------------------------------
def fmt_seconds(seconds: float) -> str:
    """12.3s, 1m 23s, 2h 05m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def say(msg: str) -> None:
    """A result line on stdout, above any open progress bar (known secrets masked)."""
    _write(scrub(str(msg)), sys.stdout)


def detail(text: str) -> None:
    """A stage's detail (tables, per-layer figures): always in the log file; on the console when verbose, or when
    the stage runs on its own rather than inside ``ray-ser run`` (see :func:`show_details`)."""
    logging.getLogger("ray_ser.detail").info("%s", text)
    if not is_verbose() and (_state["details"] or not _state["configured"]):
        say(text)


def show_details(show: bool) -> None:
    """Whether :func:`detail` text reaches the console (``ray-ser run`` turns it off: only results remain)."""
    _state["details"] = bool(show)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """One line when the stage starts, one when it ends (with its time) or fails (with the error; re-raised)."""
    fancy = _fancy(sys.stdout)
    say(f"\u25b6 {name}" if fancy else f"[stage] {name} ...")
    t0 = time.perf_counter()
    before = set(_bars)
    try:
        yield
    except BaseException as e:
        for bar in [b for b in list(_bars) if b not in before]:  # a bar the failure left open: its last state stays
            with contextlib.suppress(Exception):
                bar.close()
        took = fmt_seconds(time.perf_counter() - t0)
        reason = f"{e.__class__.__name__}: {e}".splitlines()[0] if str(e) else e.__class__.__name__
        say(f"\u2717 {name} failed after {took}: {reason}" if fancy else f"[failed] {name} after {took}: {reason}")
        raise
    took = fmt_seconds(time.perf_counter() - t0)
    say(f"\u2713 {name} ({took})" if fancy else f"[done] {name} ({took})")


class _Lines(io.TextIOBase):
    """Not a terminal: each bar refresh becomes one plain line (tqdm redraws in place with carriage returns)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, s: str) -> int:
        text = s.replace("\r", "").strip()
        if text:
            self._stream.write(text + "\n")
            self._stream.flush()
        return len(s)

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.flush()


def _bar_class():
    from tqdm import tqdm

    class Bar(tqdm):
        """tqdm that, off a terminal, redraws a postfix update at most every ``mininterval`` (each redraw is a line
        there) and does not repeat its last line when it closes."""

        live = True
        _shown_t = 0.0
        _shown_n = -1

        def display(self, msg=None, pos=None):
            self._shown_t, self._shown_n = time.time(), self.n
            return super().display(msg, pos)

        def _due(self) -> bool:
            return self.live or time.time() - self._shown_t >= self.mininterval

        def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
            super().set_postfix_str(s, refresh=refresh and self._due())

        def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
            super().set_postfix(ordered_dict, refresh=refresh and self._due(), **kwargs)

        def close(self) -> None:
            if not self.live and not self.disable and self._shown_n == self.n:
                self.leave = False  # the last line printed says as much
            super().close()

    return Bar


def progress(total: int | None, desc: str, unit: str = "it", **kwargs: Any):
    """A tqdm bar on stderr with rate and ETA. On a terminal it redraws in place (at most twice a second);
    elsewhere it prints a line at the start, at most every 30 s, and at the end."""
    stream = sys.stderr
    live = _is_tty(stream)
    options: dict[str, Any] = {"total": total, "desc": desc, "unit": unit, "dynamic_ncols": live,
                               "mininterval": 0.5 if live else 30.0, "maxinterval": 10.0 if live else 60.0,
                               "ascii": None if _fancy(stream) else True, "leave": True, "smoothing": 0.1,
                               "file": stream if live else _Lines(stream)}
    if not live:
        options["ncols"] = 100
        if total is not None:  # no bar graphics in a log: the numbers
            options["bar_format"] = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
    options.update(kwargs)
    bar = _bar_class()(**options)
    bar.live = live
    _bars.add(bar)
    return bar
