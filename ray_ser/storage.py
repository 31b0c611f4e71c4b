"""Where things are written: local folders or object-store URIs (``s3://``, ``gs://``, ``az://``), and the storage
options that reach every library that opens them.

One set of options (LanceDB/Lance keys: ``endpoint``, ``access_key_id``, ``secret_access_key``, ``session_token``,
``region``, ``allow_http``) is resolved once, on the driver, from the config and the usual environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), and then travels with the objects that use it (a
:class:`ray_ser.store.core.Store`, a run folder) to workers on other nodes, which need no credentials of their own.
The same options become a pyarrow filesystem for Ray Train and Tune (``storage_filesystem``) and an fsspec
filesystem for run folders (:func:`run_path`, a pathlib-like ``UPath``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping
from urllib.parse import urlparse

from ray_ser import redaction
from ray_ser.errors import InputError
from ray_ser.redaction import REDACTED
from ray_ser.settings import cache_dir

Options = dict[str, str]

S3_ENV = {
    "endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"),
    "access_key_id": ("AWS_ACCESS_KEY_ID",),
    "secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "session_token": ("AWS_SESSION_TOKEN",),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "allow_http": ("AWS_ALLOW_HTTP",),
}
GS_ENV = {"service_account": ("GOOGLE_SERVICE_ACCOUNT", "GOOGLE_APPLICATION_CREDENTIALS")}
AZ_ENV = {"account_name": ("AZURE_STORAGE_ACCOUNT_NAME",), "account_key": ("AZURE_STORAGE_ACCOUNT_KEY",)}

FAIL_FAST = {"connect_timeout": "5s", "timeout": "300s", "client_max_retries": "3", "client_retry_timeout": "15"}
"""Lance's object-store client defaults to retrying for minutes; an unreachable endpoint should fail in seconds (a
request may still take minutes: a data file of a large commit over a slow link)."""


_REGISTERED: dict[str, Options] = {}
"""{scheme: options} this process was given (:func:`register`): the experiment's options for its object store."""


def register(location: str | os.PathLike | None, options: Mapping[str, Any] | None) -> Options:
    """Make ``options`` (over the environment's) the ones every URI of ``location``'s scheme opens with in this
    process: a job registers its config's once, a Ray worker the driver's (:func:`snapshot`). Returns them."""
    if not is_uri(location):
        return {}
    resolved = _REGISTERED[scheme(location)] = resolve_kept(location, options, _REGISTERED.get(scheme(location)))
    return resolved


def resolve_kept(location: str | os.PathLike, options: Mapping[str, Any] | None,
                 previous: Mapping[str, str] | None) -> Options:
    """:func:`resolve_options`, where a saved config's masked secret (``***``, under any spelling of its key) keeps
    the value this process registered before (``previous``); the secret values are remembered, so every log line
    masks them. One rule for the store's options and the inputs' (:func:`ray_ser.inputs.register`)."""
    resolved = resolve_options(location, options)
    given = {canonical(k): v for k, v in (options or {}).items()}
    for key, value in (previous or {}).items():
        if given.get(key) == REDACTED:
            resolved[key] = value
    redaction.remember(v for k, v in resolved.items() if redaction.is_secret(k))
    return resolved


def snapshot() -> dict[str, Options]:
    """Every registered scheme's options, to hand to a worker (:func:`restore` there)."""
    return {k: dict(v) for k, v in _REGISTERED.items()}


def restore(saved: Mapping[str, Mapping[str, str]] | None) -> None:
    """Register a driver's :func:`snapshot` in a worker process (options as they are, no environment)."""
    for key, options in (saved or {}).items():
        _REGISTERED[key] = dict(options)


def options_for(location: str | os.PathLike | None, explicit: Mapping[str, Any] | None = None) -> Options:
    """``explicit`` options (over the environment's) when given, else those registered for ``location``'s scheme,
    else the environment's."""
    if not is_uri(location):
        return {}
    if explicit is None and scheme(location) in _REGISTERED:
        return dict(_REGISTERED[scheme(location)])
    return resolve_options(location, explicit)


class StoreUnavailable(InputError):
    """An object-store URI that cannot be used: wrong credentials, no such bucket, or no endpoint answering."""


def is_uri(location: str | os.PathLike | None) -> bool:
    """True for ``scheme://...`` (an object store or another fsspec protocol), False for a local path."""
    text = str(location or "")
    return "://" in text and not text.startswith("file://")


def scheme(location: str | os.PathLike) -> str:
    """``s3`` for ``s3://bucket/x``; ``file`` for a local path."""
    return urlparse(str(location)).scheme if is_uri(location) else "file"


def join(location: str | os.PathLike, *parts: str) -> str:
    """``location/part/...`` for a URI or a path, without turning ``s3://`` into ``s3:/``."""
    if is_uri(location):
        return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(location, *parts))


ALIASES = {
    "aws_access_key_id": "access_key_id", "aws_secret_access_key": "secret_access_key",
    "aws_session_token": "session_token", "aws_endpoint": "endpoint", "aws_endpoint_url": "endpoint",
    "aws_region": "region", "aws_allow_http": "allow_http", "google_service_account": "service_account",
    "azure_storage_account_name": "account_name", "azure_storage_account_key": "account_key",
}
"""Other spellings of the storage options (Lance's ``aws_*`` aliases, the environment variables' names in lower
case): each is read as the key it stands for, so fsspec and Lance see the same credentials."""


def canonical(key: Any) -> str:
    """The option key that ``key`` stands for (``AWS_SECRET_ACCESS_KEY`` -> ``secret_access_key``)."""
    text = str(key).lower()
    return ALIASES.get(text, text)


def resolve_options(location: str | os.PathLike | None, explicit: Mapping[str, Any] | None = None) -> Options:
    """Storage options for ``location``: the usual environment variables of its scheme, overridden by ``explicit``
    (the config's ``store.options``); empty for a local path. Values are strings, as Lance takes them."""
    if not is_uri(location):
        return {}
    env_map = {"s3": S3_ENV, "gs": GS_ENV, "az": AZ_ENV}.get(scheme(location), {})
    options: Options = {}
    for key, names in env_map.items():
        for name in names:
            if os.environ.get(name):
                options[key] = os.environ[name]
                break
    options.update({canonical(k): _text(v) for k, v in (explicit or {}).items() if v is not None and v != REDACTED})
    if scheme(location) == "s3" and options.get("endpoint", "").startswith("http://"):
        options.setdefault("allow_http", "true")
    return options


def lance_options(location: str | os.PathLike | None, options: Mapping[str, str] | None) -> Options | None:
    """What to hand Lance/LanceDB/lance-ray: the options plus fail-fast client settings (None for a local path)."""
    if not is_uri(location):
        return None
    out = {**FAIL_FAST, **dict(options or {})}
    if scheme(location) == "s3":
        for key, lance_key in LANCE_S3_KEYS.items():
            if key in out:
                out[lance_key] = out.pop(key)
    return out


LANCE_S3_KEYS = {"access_key_id": "aws_access_key_id", "secret_access_key": "aws_secret_access_key",
                 "session_token": "aws_session_token"}
"""S3 credentials under Lance's ``aws_`` names: under the short ones, Lance's namespace listing (what
``lancedb.connect`` does first) took a key pair from the AWS_* environment over the options given, and a driver with
another account's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set failed with SignatureDoesNotMatch."""


def redact(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` with secret values replaced (for configs, run records and messages): the one rule of
    :mod:`ray_ser.redaction`, which names which keys hold secrets."""
    return redaction.redact(dict(options or {}))


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


# ---- filesystems ------------------------------------------------------------------------------------------------
def fsspec_kwargs(location: str | os.PathLike, options: Mapping[str, str] | None) -> dict[str, Any]:
    """The same options as keyword arguments of the scheme's fsspec filesystem (s3fs, gcsfs, adlfs)."""
    o = dict(options or {})
    kind = scheme(location)
    if kind == "s3":
        kw: dict[str, Any] = {"key": o.get("access_key_id"), "secret": o.get("secret_access_key"),
                              "token": o.get("session_token"), "endpoint_url": o.get("endpoint"),
                              # checksums only where S3 requires them: S3-compatible servers (Ceph RGW before 19,
                              # older MinIO) refuse the streamed aws-chunked uploads that newer SDKs send by default
                              "config_kwargs": {"connect_timeout": 5, "retries": {"max_attempts": 3},
                                                "request_checksum_calculation": "when_required",
                                                "response_checksum_validation": "when_required"}}
        if o.get("region"):
            kw["client_kwargs"] = {"region_name": o["region"]}
        return {k: v for k, v in kw.items() if v is not None}
    if kind == "gs":
        return {"token": o["service_account"]} if o.get("service_account") else {}
    if kind == "az":
        return {k: o[k] for k in ("account_name", "account_key") if o.get(k)}
    return {}


def run_path(location: str | os.PathLike, options: Mapping[str, str] | None = None):
    """A run folder (or a file in one) as a pathlib-like object: a :class:`~pathlib.Path` for a local path, an
    ``upath.UPath`` on the object store for a URI (``read_text``, ``write_bytes``, ``glob``, ``exists``, ``/``)."""
    if isinstance(location, Path) or not is_uri(location):
        return Path(location)
    if hasattr(location, "protocol"):  # already a UPath
        return location
    from upath import UPath

    return UPath(str(location), **fsspec_kwargs(location, options_for(location, options)))


@contextlib.contextmanager
def staged(location: str | os.PathLike) -> Iterator[Path]:
    """A local folder to write a job's outputs into: ``location`` itself when it is a path; for a URI a scratch
    folder whose files are copied to ``location`` when the block ends without error (each file one PUT, so a
    reader sees a file whole or not at all; a failed job uploads nothing)."""
    if not is_uri(location):
        Path(location).mkdir(parents=True, exist_ok=True)
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="ray_ser_out_") as d:
        yield Path(d)
        upload(Path(d), location)


def upload(folder: Path, location: str | os.PathLike) -> int:
    """Copy every file under the local ``folder`` to ``location`` (same relative names); returns the files copied."""
    root = run_path(location)
    n = 0
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            (root / f.relative_to(folder).as_posix()).write_bytes(f.read_bytes())
            n += 1
    return n


def write_whole(target, write: Callable[[BinaryIO], None]):
    """Write a file whole or not at all, to a path or a URI: ``write`` fills a file object, which becomes a temporary
    file renamed into place on disk, or one PUT on an object store. Returns the target (a path or a UPath)."""
    target = run_path(target)
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as fh:
            write(fh)
        tmp.replace(target)
        return target
    buf = io.BytesIO()
    write(buf)
    target.write_bytes(buf.getvalue())
    return target


def write_parquet(frame, target) -> None:
    """Write a Polars frame to ``target`` (a path or a URI) whole or not at all."""
    write_whole(target, frame.write_parquet)


def arrow_filesystem(location: str | os.PathLike, options: Mapping[str, str] | None = None):
    """``(pyarrow filesystem, path on it)`` for Ray Train's and Tune's ``storage_path``/``storage_filesystem``;
    ``(None, absolute local path)`` for a local folder (Ray's own default).

    An object store gets the fsspec filesystem of :func:`fsspec_kwargs` wrapped for pyarrow: it carries the
    options explicitly (a Train controller or Tune trial on another node has no environment of ours), and unlike
    pyarrow's own S3 client it can be told to send checksums only where required, which S3-compatible servers
    such as Ceph's gateway need for multipart uploads."""
    if not is_uri(location):
        return None, str(Path(location).resolve())
    import fsspec
    import pyarrow.fs as pafs

    parsed = urlparse(str(location))
    resolved = options_for(location, options)
    fs = fsspec.filesystem(parsed.scheme, **fsspec_kwargs(location, resolved))
    return pafs.PyFileSystem(_KeptHandler(fs, str(location), resolved)), (parsed.netloc + parsed.path).rstrip("/")


KV_NAMESPACE = "ray_ser_storage"
"""The Ray GCS key-value namespace where :func:`arrow_filesystem`'s options wait for the processes that unpickle it."""


def _handler_base():
    import pyarrow.fs as pafs

    return pafs.FSSpecHandler


class _KeptHandler(_handler_base()):
    """pyarrow's fsspec handler, pickled without its credentials: Ray Tune saves its run config (this filesystem
    included) in tuner.pkl and its search state beside the experiment, on the bucket. The options go to the Ray
    cluster's in-memory key-value store instead, under a digest that the pickle carries; a trial or Train worker
    that unpickles it reads them there (else this process's registered options, else the environment). A resumed
    search is handed a fresh filesystem, so nothing needs the options from the file."""

    def __init__(self, fs, location: str, options: Mapping[str, str]):
        super().__init__(fs)
        self.location, self.options = location, dict(options)

    def __reduce__(self):
        import json

        key = hashlib.sha256(json.dumps(sorted(self.options.items())).encode()).hexdigest()[:32]
        try:
            import ray
            from ray.experimental import internal_kv

            if ray.is_initialized():
                internal_kv._internal_kv_put(key, json.dumps(self.options), overwrite=True, namespace=KV_NAMESPACE)
        except Exception:  # noqa: BLE001 - no cluster: the unpickling process falls back to its own options
            pass
        return _kept_handler, (self.location, key)


def _kept_handler(location: str, key: str) -> "_KeptHandler":
    """Unpickle a :class:`_KeptHandler`: its options from the Ray cluster's key-value store, else this process's."""
    import json

    import fsspec

    options = None
    try:
        import ray
        from ray.experimental import internal_kv

        if ray.is_initialized():
            raw = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
            options = json.loads(raw) if raw else None
    except Exception:  # noqa: BLE001 - not in a Ray process
        options = None
    if options is None:
        options = options_for(location)
    fs = fsspec.filesystem(urlparse(location).scheme, **fsspec_kwargs(location, options))
    return _KeptHandler(fs, location, options)


def local_log_dir(location: str | os.PathLike) -> Path:
    """Where the driver's log of a run on an object store goes: this machine's cache (a log is the driver's own,
    and an object store cannot be appended to line by line)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(location).split("://", 1)[-1]).strip("_")[-80:]
    digest = hashlib.sha1(str(location).encode()).hexdigest()[:8]
    return cache_dir() / "logs" / f"{slug}-{digest}"


# ---- a quick check before any work ------------------------------------------------------------------------------
def check_reachable(location: str, options: Mapping[str, str] | None) -> None:
    """Fail within seconds, naming ``location`` and the reason, when its bucket cannot be listed (wrong
    credentials, no such bucket, no endpoint answering); nothing is written. A local path is always fine."""
    key = (str(location), repr(sorted((options or {}).items())))
    if not is_uri(location) or key in _CHECKED:
        return
    import fsspec

    parsed = urlparse(str(location))
    fs = fsspec.filesystem(parsed.scheme, skip_instance_cache=True, **fsspec_kwargs(location, options))
    where = (options or {}).get("endpoint") or "the default endpoint"
    try:
        fs.ls(parsed.netloc, detail=False)
    except FileNotFoundError:
        raise StoreUnavailable(f"{location}: bucket {parsed.netloc!r} does not exist at {where}") from None
    except Exception as e:  # noqa: BLE001 - the client's own reason (denied, bad signature, refused) says it best
        reason = " ".join(str(e).split())
        if reason in ("", "None"):  # s3fs's PermissionError carries the service's answer as its cause
            reason = " ".join(str(e.__cause__ or e.__context__ or type(e).__name__).split())
        reason = reason.removesuffix(": None")
        if isinstance(e, PermissionError):
            reason = f"access denied (credentials): {reason}"
        if len(reason) > 300:
            reason = reason[:300] + "..."
        raise StoreUnavailable(f"{location}: cannot use the object store at {where}: {reason}") from None
    _CHECKED.add(key)


_CHECKED: set[tuple[str, str]] = set()
