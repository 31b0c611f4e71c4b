"""A real S3-compatible object store for the tests: Ceph's RADOS Gateway on loopback, one node, data in memory.

    gw = start_rgw(workdir)               # or the session-scoped `rgw` fixture
    db = lancedb.connect(gw.uri("db"), storage_options=gw.storage_options())
    gw.stop()

`start_rgw` brings up a whole Ceph cluster under `workdir` (its own ceph.conf, fsid, data dirs, pid files, logs and
admin sockets; nothing in /etc/ceph or /var/lib/ceph): one monitor, one OSD on the memstore objectstore, and one
radosgw with the beast frontend, each on 127.0.0.1 (the monitor and gateway on free ports, the OSD in Ceph's own
6800-7568 range, where it takes the first free port). It creates a user with fixed test keys and a bucket. The
daemons run in the foreground (`-f`), each in its own process group, as children of the calling process; `stop()`
signals exactly those pids (SIGTERM, then SIGKILL) and removes what `start_rgw` wrote.

The binaries come from Debian's ceph-mon, ceph-osd and radosgw packages (tests/services/install_ceph.sh).

Settings that matter (see `_conf`):
- auth is off (`auth_*_required = none`); the messenger modes must then be `crc`, not the default `secure` for
  monitor clients (`ms_mon_client_mode`), or radosgw retries its monitor session silently for 300 s.
- one OSD holds every pool, so pools have size 1 (`osd_pool_default_size` / `min_size`), which Pacific refuses
  without `mon_allow_pool_size_one`; `osd_crush_chooseleaf_type = 0` lets CRUSH place on a single host.
- memstore keeps objects in RAM; `memstore_device_bytes` caps it. A full OSD makes writes block rather than fail.
- radosgw creates its pools itself (4 on start, the bucket index and data pools on first use); each pool is two
  monitor proposals, and at the default `paxos_propose_interval` of 1 s start-up takes ~16 s instead of ~2.5 s.
  `start_rgw` creates the bucket and writes one object, so the first test does not pay for the last two pools.
- stop order is gateway, OSD, monitor: a stopping OSD tells the monitor first and waits for it
  (`osd_mon_shutdown_timeout`, 5 s by default, 1 s here) if the monitor is already gone.
- each daemon is started through `setpriv --pdeathsig TERM`, so a SIGKILLed test process leaves no daemons behind
  (the signal follows the *thread* that started them: call start_rgw from a thread that outlives the gateway).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import hashlib
import hmac
import http.client
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
ACCESS_KEY = "RAYSERTESTACCESSKEY0"
SECRET_KEY = "raysertestsecretkey0000000000000000000000"
REGION = "us-east-1"
BUCKET = "ray-ser"
# What start_rgw writes under workdir; stop() removes exactly these.
_OWNED = ("ceph.conf", "keyring", "monmap", "mon", "osd", "rgw", "run", "log", "crash")


def missing_binaries() -> list[str]:
    """The Ceph programs start_rgw needs that are not on PATH."""
    return [b for b in BINARIES if shutil.which(b) is None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ceph_env() -> dict[str, str]:
    """The environment for Ceph programs: no CEPH_ARGS/CEPH_CONF from outside, and no PYTHON* variables from our
    virtualenv (`ceph` itself is a /usr/bin/python3 script importing the system's rados module)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CEPH_", "PYTHON"))}


@dataclass(eq=False)
class Gateway:
    """A running radosgw (and the monitor and OSD behind it), started by `start_rgw`."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    bucket: str
    workdir: Path
    startup_s: float = 0.0
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    # --- what clients need -----------------------------------------------------------------------------------
    def storage_options(self) -> dict[str, str]:
        """The object-store options LanceDB and pylance take (`storage_options=`)."""
        return {
            "endpoint": self.endpoint,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            "region": self.region,
            "allow_http": "true",
        }

    def env(self) -> dict[str, str]:
        """The same as environment variables, for a subprocess or a Ray runtime_env's env_vars."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
        }

    def uri(self, *parts: str) -> str:
        """s3://<bucket>/<parts joined by '/'>."""
        return "/".join([f"s3://{self.bucket}", *(str(p).strip("/") for p in parts)])

    def new_bucket(self, name: str) -> str:
        """Create a bucket owned by the test user; returns its name."""
        status, _, body = self.request("PUT", f"/{name}")
        if status != 200:
            raise RuntimeError(f"creating bucket {name!r} on {self.endpoint}: HTTP {status} {body[:300]!r}")
        return name

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
        """One S3 request signed with SigV4 as the test user; path is '/bucket', '/bucket/key' or either with a
        '?query' (e.g. '/bucket?list-type=2&prefix=t/'). Returns (status, headers, body)."""
        return _signed_request(self, method, path, body, headers or {}, timeout)

    # --- lifecycle -------------------------------------------------------------------------------------------
    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self._procs.items()}

    def log(self, daemon: str = "client.rgw") -> Path:
        """A daemon's log file: 'mon.a', 'osd.0' or 'client.rgw' (the daemon's stderr is in log/<name>.out)."""
        return self.workdir / "log" / f"{daemon}.log"

    def stop(self, timeout: float = 10.0, remove: bool = True) -> None:
        """Stop the daemons this Gateway started, by pid, gateway first; then remove what start_rgw wrote."""
        for name in ("client.rgw", "osd.0", "mon.a"):
            p = self._procs.pop(name, None)
            if p is None:
                continue
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        atexit.unregister(self.stop)
        if remove:
            _remove_owned(self.workdir)


def _remove_owned(workdir: Path) -> None:
    for name in _OWNED:
        p = workdir / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        workdir.rmdir()  # only if nothing else is in it


def _signed_request(gw: Gateway, method: str, path: str, body: bytes, headers: dict[str, str],
                    timeout: float) -> tuple[int, dict[str, str], bytes]:
    url = urllib.parse.urlsplit(gw.endpoint)
    path, _, query = path.partition("?")
    params = sorted(urllib.parse.parse_qsl(query, keep_blank_values=True))
    query = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in params)
    target = urllib.parse.quote(path, safe="/~") + (f"?{query}" if query else "")
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(body).hexdigest()
    hdrs = {k.lower(): str(v).strip() for k, v in headers.items()}
    hdrs.update({"host": url.netloc, "x-amz-date": amz_date, "x-amz-content-sha256": payload})
    signed = ";".join(sorted(hdrs))
    canonical = "\n".join([
        method, urllib.parse.quote(path, safe="/~"), query,
        "".join(f"{k}:{hdrs[k]}\n" for k in sorted(hdrs)), signed, payload,
    ])
    scope = f"{day}/{gw.region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + gw.secret_key).encode()
    for part in (day, gw.region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    hdrs["authorization"] = (f"AWS4-HMAC-SHA256 Credential={gw.access_key}/{scope}, "
                             f"SignedHeaders={signed}, Signature={signature}")
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def _conf(workdir: Path, fsid: str, mon_port: int, rgw_port: int, memstore_bytes: int) -> str:
    w = str(workdir)
    # Unix sockets take paths of at most 107 bytes; without an admin socket the daemons still run.
    asok = f"{w}/run/$name.asok" if len(f"{w}/run/client.rgw.asok") < 100 else ""
    return f"""\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
ms bind msgr1 = false
ms bind retry count = 1
ms bind retry delay = 1
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
ms mon cluster mode = crc
ms mon service mode = crc
ms client mode = crc
ms cluster mode = crc
ms service mode = crc
keyring = {w}/keyring
log file = {w}/log/$name.log
pid file = {w}/run/$name.pid
admin socket = {asok}
run dir = {w}/run
crash dir = {w}/crash
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 1
mon data avail crit = 0
paxos propose interval = 0.1

[mon]
mon data = {w}/mon/$name
mon cluster log file = {w}/log/cluster.log

[osd]
osd data = {w}/osd/$id
osd objectstore = memstore
osd journal = {w}/osd/$id/journal
memstore device bytes = {memstore_bytes}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
osd mon shutdown timeout = 1

[client.rgw]
rgw data = {w}/rgw
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
"""


class _PortTaken(RuntimeError):
    """A daemon could not bind its port (taken between free_port() and the bind): start again on other ports."""


def _run(args: list[str], deadline: float, what: str) -> str:
    left = max(deadline - time.monotonic(), 1.0)
    try:
        r = subprocess.run(args, check=False, capture_output=True, text=True, timeout=left, env=_ceph_env())
    except subprocess.TimeoutExpired as e:
        raise TimeoutError(f"{what} did not finish in {left:.0f}s: {' '.join(args)}") from e
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed ({r.returncode}): {' '.join(args)}\n{r.stdout}{r.stderr}")
    return r.stdout


def _spawn(gw: Gateway, name: str, args: list[str]) -> None:
    # setpriv --pdeathsig: the daemon gets SIGTERM if the thread that started it dies (a killed pytest leaks no
    # daemons); plain exec otherwise. It execs, so the pid stays the daemon's.
    wrap = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []
    with open(gw.workdir / "log" / f"{name}.out", "ab") as out:  # the daemon keeps its own copy of the fd
        gw._procs[name] = subprocess.Popen(
            wrap + args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=gw.workdir, env=_ceph_env(), start_new_session=True,
        )


def _check_alive(gw: Gateway) -> None:
    for name, p in gw._procs.items():
        if p.poll() is not None:
            logs = [gw.log(name), gw.workdir / "log" / f"{name}.out"]
            text = "".join(f.read_text(errors="replace") for f in logs if f.exists())
            if "Address already in use" in text:
                raise _PortTaken(f"{name} could not bind its port")
            tail = "\n".join(text.splitlines()[-15:])
            raise RuntimeError(f"{name} exited with {p.returncode} during start-up; see {logs[0]}\n{tail}")


def _answers(endpoint: str) -> bool:
    url = urllib.parse.urlsplit(endpoint)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=2)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def _bring_up(gw: Gateway, mon_port: int, rgw_port: int, memstore_bytes: int, deadline: float) -> None:
    w = gw.workdir
    for d in ("mon/mon.a", "osd/0", "rgw", "run", "log", "crash"):
        (w / d).mkdir(parents=True, exist_ok=True)
    fsid = str(uuid.uuid4())
    conf = w / "ceph.conf"
    conf.write_text(_conf(w, fsid, mon_port, rgw_port, memstore_bytes))
    (w / "keyring").touch()
    c = ["-c", str(conf)]

    _run(["monmaptool", "--create", "--clobber", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{mon_port}]",
          str(w / "monmap")], deadline, "monmaptool")
    _run(["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(w / "monmap")], deadline, "ceph-mon --mkfs")
    _spawn(gw, "mon.a", ["ceph-mon", *c, "-i", "a", "-f"])

    # Short tries, checking on the monitor between them: if it died (say its port was taken after free_port()
    # chose it), one long try would wait out the deadline. `osd new` with the same uuid is idempotent.
    osd_uuid = str(uuid.uuid4())
    while True:
        _check_alive(gw)
        try:
            osd_id = _run(["ceph", *c, "--connect-timeout", "5", "osd", "new", osd_uuid],
                          min(deadline, time.monotonic() + 10), "ceph osd new").strip()
            break
        except (RuntimeError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    if osd_id != "0":
        raise RuntimeError(f"ceph osd new gave osd id {osd_id!r}, expected 0")
    _check_alive(gw)
    _run(["ceph-osd", *c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid], deadline, "ceph-osd --mkfs")
    _spawn(gw, "osd.0", ["ceph-osd", *c, "-i", "0", "-f"])
    _spawn(gw, "client.rgw", ["radosgw", *c, "-n", "client.rgw", "-f"])

    while not _answers(gw.endpoint):
        _check_alive(gw)
        if time.monotonic() > deadline:
            raise TimeoutError(f"radosgw did not answer on {gw.endpoint} in time; see {gw.log()} "
                               f"(and {w / 'log'} for the monitor's and OSD's logs)")
        time.sleep(0.25)

    _run(["radosgw-admin", *c, "user", "create", "--uid", "ray-ser-test", "--display-name", "ray_ser tests",
          "--access-key", gw.access_key, "--secret", gw.secret_key], deadline, "radosgw-admin user create")
    gw.new_bucket(gw.bucket)
    # The first object creates the data pool (an osdmap change, ~2 s): pay it here, not in the first test.
    for method in ("PUT", "DELETE"):
        status, _, body = gw.request(method, f"/{gw.bucket}/.rgw-warm-up", b"x" if method == "PUT" else b"")
        if status not in (200, 204):
            raise RuntimeError(f"{method} of a warm-up object on {gw.endpoint}: HTTP {status} {body[:300]!r}")


def start_rgw(workdir: Path, *, bucket: str = BUCKET, timeout: float = 60.0,
              memstore_bytes: int = 2 << 30) -> Gateway:
    """Start a one-node Ceph cluster and radosgw under `workdir` (empty, new, or an earlier start_rgw's, whose
    files are replaced); returns once the bucket exists.

    Raises FileNotFoundError when the Ceph programs are not installed, TimeoutError (naming the log file) when
    the gateway does not answer within `timeout` seconds, RuntimeError when a daemon exits during start-up.
    """
    missing = missing_binaries()
    if missing:
        raise FileNotFoundError(f"Ceph programs not on PATH: {', '.join(missing)} (tests/services/install_ceph.sh)")
    workdir = Path(workdir).resolve()
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / "ceph.conf").exists():
        raise ValueError(f"{workdir} is neither empty nor an earlier start_rgw's workdir; give it its own directory")
    t0 = time.monotonic()
    for attempt in range(3):
        mon_port, rgw_port = free_port(), free_port()
        while rgw_port == mon_port:
            rgw_port = free_port()
        gw = Gateway(endpoint=f"http://127.0.0.1:{rgw_port}", access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                     region=REGION, bucket=bucket, workdir=workdir)
        _remove_owned(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        atexit.register(gw.stop)
        try:
            _bring_up(gw, mon_port, rgw_port, memstore_bytes, t0 + timeout)
        except _PortTaken:
            gw.stop()
            if attempt == 2:
                raise
            continue
        except BaseException:
            gw.stop(remove=False)  # keep the logs the error names
            raise
        gw.startup_s = time.monotonic() - t0
        return gw
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def rgw(tmp_path_factory):
    """A radosgw for the whole session. Skips when Ceph is not installed, unless $CI is set: then it fails."""
    missing = missing_binaries()
    if missing:
        msg = f"Ceph's radosgw is not installed ({', '.join(missing)} missing; run tests/services/install_ceph.sh)"
        if os.environ.get("CI"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    gw = start_rgw(tmp_path_factory.mktemp("rgw"))
    try:
        yield gw
    finally:
        gw.stop()
