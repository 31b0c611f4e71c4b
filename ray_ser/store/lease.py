"""Leases in the store: one writer at a time per table, across processes and machines, with a heartbeat.

A lease is a one-row table ``lease__<name>`` in the store itself (so it works wherever the store lives, a
folder or an object store, with no lock server). The table is created holding a free row by
:meth:`~ray_ser.store.core.Store.create_exclusive`: of racing creators exactly one succeeds, and a creator that
comes late fails instead of overwriting a lease that is already held. (A plain ``create_table`` is not
exclusive: Lance commits a racing create as an Overwrite, which would reset a lease taken meanwhile to free,
so two processes could hold it.) The lease is only ever taken by a conditional ``update`` of that row: Lance
detects the concurrent update of the same row and re-evaluates the condition, so exactly one taker of a free
or stale lease wins. Every ``update`` names the row's ``token``, a counter bumped on each hand-over (tested
with processes racing for it, ``tests/test_lease.py``).

The holder refreshes ``heartbeat`` from a background thread every ``ttl / 4`` seconds. A lease whose
heartbeat is older than ``ttl`` is stale and may be taken over; so is one whose holder ran on this machine
(same host name and process namespace) in a process that no longer exists, so a re-run after a killed
driver does not wait for the ttl. A holder that finds its row taken over (its heartbeat stalled past the
ttl) is told by :meth:`Lease.check`, which the extraction driver calls before every commit and which reads
the row itself, so a takeover is caught at the next commit even between heartbeats.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyarrow as pa

from ray_ser.names import safe_name
from ray_ser.store.names import sql_string

log = logging.getLogger(__name__)

LEASE_TTL_S = 60.0
"""A lease whose heartbeat is older than this is stale (the holder died or hangs) and may be taken over."""
UNREADABLE_S = 30.0
"""How long :meth:`Lease.acquire` retries a lease table it can neither read nor create before it raises."""

SCHEMA = pa.schema([
    ("name", pa.string()), ("holder", pa.string()), ("what", pa.string()), ("host", pa.string()),
    ("pid", pa.int64()), ("pidns", pa.string()), ("acquired", pa.float64()), ("heartbeat", pa.float64()),
    ("token", pa.int64()),
])
FREE = ""


class LeaseHeld(RuntimeError):
    """Another live process holds the lease."""


class LeaseLost(RuntimeError):
    """This process's lease was taken over (its heartbeat stalled longer than the ttl)."""


def _pidns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_gone(pid: int) -> bool:
    """True when no process ``pid`` runs here (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


@dataclass
class Holder:
    """The lease row as read."""

    name: str
    holder: str
    what: str
    host: str
    pid: int
    pidns: str
    acquired: float
    heartbeat: float
    token: int

    def stale(self, ttl: float, at: float) -> str | None:
        """Why this holder no longer counts (None while it does)."""
        if self.holder == FREE:
            return "free"
        if at - self.heartbeat > ttl:
            return f"no heartbeat for {at - self.heartbeat:.0f} s"
        if self.host == socket.gethostname() and self.pidns == _pidns() and _process_gone(self.pid):
            return f"process {self.pid} on this machine has exited"
        return None

    def describe(self, at: float) -> str:
        return (f"run {self.holder} ({self.what or 'unknown work'}; host {self.host}, pid {self.pid}, "
                f"started {at - self.acquired:.0f} s ago, last heartbeat {at - self.heartbeat:.0f} s ago)")


class Lease:
    """A held lease; release it with :meth:`release` or use it as a context manager."""

    def __init__(self, store, name: str, run_id: str, token: int, ttl: float, what: str):
        self.store, self.name, self.run_id, self.token, self.ttl, self.what = store, name, run_id, token, ttl, what
        self.table_name = f"lease__{name}"
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_loop, name=f"lease-{name}", daemon=True)
        self._thread.start()

    # taking it -------------------------------------------------------------------------------------
    @classmethod
    def acquire(cls, store, name: str, run_id: str, what: str = "", ttl: float = LEASE_TTL_S,
                wait: float = 0.0, poll: float = 2.0) -> "Lease":
        """Take the lease ``name`` for ``run_id``; wait up to ``wait`` seconds for a live holder, then raise
        :class:`LeaseHeld` naming it."""
        name = safe_name(name)
        table_name = f"lease__{name}"
        deadline = time.time() + wait
        unreadable_since: float | None = None
        while True:
            at = time.time()
            mine = {"name": name, "holder": run_id, "what": what, "host": socket.gethostname(), "pid": os.getpid(),
                    "pidns": _pidns(), "acquired": at, "heartbeat": at}
            try:
                current = cls._read(store, table_name)
            # missing, never committed, or a version cleaned up under this reader; e is the reason given below
            except Exception as e:  # noqa: F841
                free = pa.Table.from_pylist([{**mine, "holder": FREE, "heartbeat": 0.0, "token": 0}], schema=SCHEMA)
                try:
                    if store.create_exclusive(table_name, SCHEMA, free):
                        continue
                except Exception as create_error:  # neither readable nor creatable: try again, then give up
                    e = create_error
                if unreadable_since is None:
                    unreadable_since = at
                elif at - unreadable_since > UNREADABLE_S:
                    raise RuntimeError(f"lease table {store.table_uri(table_name)} can be neither read nor "
                                       f"created for {at - unreadable_since:.0f} s: {e}") from e
                log.debug("lease %s unreadable (%s), retrying", name, e)
                time.sleep(0.2)
                continue
            unreadable_since = None
            why = current.stale(ttl, at)
            if why is not None:
                token = current.token + 1
                values = {**mine, "token": token}
                try:
                    result = store.open(table_name).update(
                        where=f"holder = {sql_string(current.holder)} AND token = {current.token}", values=values)
                except RuntimeError as e:  # a concurrent commit (another taker, a racing create) came first
                    if "transaction" not in str(e).lower() and "conflict" not in str(e).lower():
                        raise
                    log.debug("lease %s: update lost a commit race (%s), looking again", name, e)
                    continue
                if getattr(result, "rows_updated", 1) == 1 and cls._read(store, table_name).holder == run_id:
                    if current.holder != FREE:
                        log.warning("took over lease %s from %s: %s", name, current.describe(at), why)
                    return cls(store, name, run_id, token, ttl, what)
                continue  # another taker won; look again
            if at >= deadline:
                raise LeaseHeld(
                    f"{table_name} in store {store.uri} is held by {current.describe(at)}: two writers would "
                    "duplicate rows. Wait for it to finish (or pass a wait time, e.g. --wait-lease 600); a holder "
                    f"that died frees it after {ttl:.0f} s without a heartbeat.")
            log.info("waiting for lease %s, held by %s", name, current.describe(at))
            time.sleep(max(0.05, min(poll, deadline - at)))

    @staticmethod
    def _read(store, table_name: str) -> Holder:
        rows = store.open(table_name).to_arrow().to_pylist()
        if len(rows) != 1:
            raise RuntimeError(f"{table_name} holds {len(rows)} rows, expected 1")
        return Holder(**rows[0])

    # holding it ------------------------------------------------------------------------------------
    def _beat_loop(self) -> None:
        beats = 0
        while not self._stop.wait(self.ttl / 4):
            try:
                self.beat()
            except LeaseLost as e:
                self._lost = str(e)
                return
            except Exception as e:  # a transient store error: the next beat tries again
                log.warning("lease %s heartbeat failed: %s", self.name, e)
            beats += 1
            if beats % 20 == 0:
                self._cleanup()

    def beat(self) -> None:
        """Refresh the heartbeat; raises LeaseLost when another process took the lease over."""
        result = self.store.open(self.table_name).update(
            where=f"holder = {sql_string(self.run_id)} AND token = {self.token}", values={"heartbeat": time.time()})
        if getattr(result, "rows_updated", 1) != 1:
            raise LeaseLost(f"lease {self.name} of run {self.run_id} was taken over by another process")

    def check(self) -> None:
        """Raise LeaseLost if the lease was taken over (call before each commit): as the heartbeat thread
        found it, or as the row reads now."""
        if not self._lost:
            try:
                row = self._read(self.store, self.table_name)
            except Exception as e:  # unreadable for a moment: the heartbeat thread still watches
                log.debug("lease %s check could not read the row: %s", self.name, e)
            else:
                if (row.holder, row.token) != (self.run_id, self.token):
                    self._lost = (f"lease {self.name} of run {self.run_id} (token {self.token}) is now held by "
                                  f"{row.holder or 'nobody'} (token {row.token})")
        if self._lost:
            raise LeaseLost(self._lost + ": this run stops before writing more")

    def _cleanup(self) -> None:
        """Drop the lease table's old versions (every heartbeat is a commit) after a grace for readers."""
        try:
            self.store.open(self.table_name).to_lance().cleanup_old_versions(older_than=timedelta(minutes=5))
        except Exception as e:
            log.debug("lease %s cleanup: %s", self.name, e)

    def release(self) -> None:
        """Stop the heartbeat and free the lease (only if this run still holds it)."""
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            self.store.open(self.table_name).update(
                where=f"holder = {sql_string(self.run_id)} AND token = {self.token}",
                values={"holder": FREE, "heartbeat": 0.0})
        except Exception as e:  # the heartbeat stops either way; a stale lease is taken over after the ttl
            log.warning("could not release lease %s: %s", self.name, e)
        self._cleanup()

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
