"""Secrets never leave the process: one rule for which names hold a secret, one redaction for every record ray_ser
writes (saved configs, the store's ``runs`` table, run.json, checkpoints' config.json, the report, ``config show``),
and a log filter that masks any secret value this process knows of, whatever line it turns up in.

A name holds a secret when one of its words (split at ``_``, ``-``, ``.`` and camelCase humps) is ``secret``,
``token``, ``password``/``passwd``, ``credential(s)`` or ``sas``, or when it contains ``account_key``,
``private_key`` or ``api_key``: ``secret_access_key``, ``aws_secret_access_key``, ``session_token``,
``AZURE_STORAGE_ACCOUNT_KEY``, ``google_application_credentials`` and ``sas_token`` all do; ``tokenizer`` does not.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Iterable, Mapping

REDACTED = "***"
"""What a secret value becomes in every record (a stage reading a saved config keeps the secret it already has)."""

SECRET_WORDS = frozenset({"secret", "secrets", "token", "tokens", "password", "passwd", "credential", "credentials",
                          "sas"})
SECRET_PARTS = ("account_key", "private_key", "api_key")

_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD = re.compile(r"[_\-.\s]+")

_KNOWN: set[str] = set()
"""Secret values this process has seen (from configs and the environment): masked in every log line."""

MIN_SECRET_CHARS = 4
"""Shorter values are not remembered for masking: a one- or two-character "secret" would mask ordinary text."""


def snake(name: str) -> str:
    """``secretAccessKey`` -> ``secret_access_key`` (lower case, words joined by ``_``)."""
    return "_".join(w for w in _WORD.split(_HUMP.sub("_", str(name)).lower()) if w)


def is_secret(name: str) -> bool:
    """Whether a config key, option or environment variable called ``name`` holds a secret."""
    key = snake(name)
    return bool(SECRET_WORDS.intersection(key.split("_"))) or any(part in key for part in SECRET_PARTS)


def remember(values: Iterable[Any]) -> None:
    """Mask these values in every later log line of this process (non-empty strings of 4 or more characters)."""
    for v in values:
        if isinstance(v, str) and len(v) >= MIN_SECRET_CHARS and v != REDACTED:
            _KNOWN.add(v)


def remember_environment(environ: Mapping[str, str] | None = None) -> None:
    """Remember the values of every environment variable whose name holds a secret (AWS_SECRET_ACCESS_KEY, ...)."""
    env = os.environ if environ is None else environ
    remember(v for k, v in env.items() if is_secret(k))


def known() -> frozenset[str]:
    return frozenset(_KNOWN)


def forget() -> None:
    """Drop every remembered value (tests)."""
    _KNOWN.clear()


def _secrets_in(value: Any, under_secret: bool = False) -> Iterable[str]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _secrets_in(v, under_secret or is_secret(str(k)))
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _secrets_in(v, under_secret)
    elif under_secret and isinstance(value, str):
        yield value


def redact(value: Any) -> Any:
    """A copy of ``value`` (mappings and lists, nested) with the value of every secret-named key replaced by
    :data:`REDACTED`, and every known secret inside any other string masked; the secret values found are remembered
    so log lines mask them too."""
    remember(_secrets_in(value))
    return _redact(value)


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_secret(str(k)) and v not in (None, "", {}, []) else _redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v) for v in value]
    if isinstance(value, str):
        return scrub(value)
    return value


def scrub(text: str) -> str:
    """``text`` with every known secret value replaced by :data:`REDACTED` (longest first)."""
    if not _KNOWN or not text:
        return text
    for secret in sorted(_KNOWN, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class ScrubFilter(logging.Filter):
    """A handler filter that masks known secrets in a record's formatted message (and its traceback text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _KNOWN:
            return True
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            import traceback

            record.exc_text = scrub("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True
