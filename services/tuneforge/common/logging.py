"""Structured logging with secrets redacted and request/job correlation.

``configure_logging(json=True)`` emits one JSON object per line. ``log_context(tenant=..., job_id=...)``
binds correlation fields (a contextvar) that every record written inside it carries as ``ctx_*``
attributes (JSON keys): the gRPC interceptors bind ``request_id``, ``trace_id`` (the current OpenTelemetry
trace: ``common.tracing``; records also carry the current ``span_id``) and ``method``
(and ``tenant`` once the caller is known); a training run binds ``job_id`` and ``tenant``. A redaction filter scrubs bearer
tokens, registered secrets (``register_secret``), credentials in URLs and ``key=value`` pairs whose
key looks secret, from the message, its arguments and the exception text, before any handler sees them.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

REDACTED = "[REDACTED]"
# Redaction is linear in the text, and the text is bounded: a log line longer than this keeps its
# head and tail (a 1 MiB request field must not stall every thread behind the GIL).
MAX_LOGGED_CHARS = 16_384

# Every pattern below is linear: each quantifier is bounded or possessive (Python 3.11+), so no
# input makes the engine backtrack more than a constant per position.
_PATTERNS = [
    # Authorization: Bearer <token>
    (re.compile(r"(?i)(bearer\s{1,8})[A-Za-z0-9._~+/=-]++"), r"\1" + REDACTED),
    # scheme://user:password@host (the scheme starts at a word boundary, each part is bounded)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,31}://[^/\s:@]{1,256}:)[^@\s/]{1,512}@"), r"\1" + REDACTED + "@"),
    # password=..., secret_key: ..., token=..., api_key=...
    (
        re.compile(
            r"(?i)\b([a-z0-9_]{0,64}?(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)[a-z0-9_]{0,64}+"
            r"[\"']?\s{0,8}[=:]\s{0,8}[\"']?)([^\s,;\"'&]++)"
        ),
        r"\1" + REDACTED,
    ),
    # AWS access key ids
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), REDACTED),
]

# A text none of the patterns can match contains one of these words (case aside; "://" for URLs):
# checked once, it spares the four substitutions on almost every line (every call's access log
# line went through 28 of them, a sizeable part of a call's CPU under load).
_MAY_MATCH = re.compile(r"(?i)bearer|://|passw|secret|token|api[_-]?key|access[_-]?key|AKIA|ASIA")

_secrets: set[str] = set()
_secrets_longest_first: tuple[str, ...] = ()
_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Redact this exact value wherever it appears in a log record (tokens, keys from settings)."""
    global _secrets_longest_first
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)
            _secrets_longest_first = tuple(sorted(_secrets, key=len, reverse=True))


def bound(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """``text`` cut to about ``limit`` characters: head and tail kept, the middle counted."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}...[{len(text) - 2 * half} chars cut]...{text[-half:]}"


def redact(text: str) -> str:
    """Return ``text`` (bounded to ``MAX_LOGGED_CHARS``) with every known secret and
    secret-looking value replaced. Linear in the length of the text."""
    text = bound(text)
    for s in _secrets_longest_first:  # a tuple replaced whole on registration: no lock needed to read it
        if s in text:
            text = text.replace(s, REDACTED)
    if _MAY_MATCH.search(text) is None:
        return text
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("tuneforge_log_context",
                                                                                default=None)


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Add correlation fields (``tenant``, ``method``, ``request_id``, ``trace_id``, ``job_id``) to every
    log record written inside the block, nested blocks adding to the outer ones. Empty values are ignored."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # a generator closed in another context (a stream the client left)
            _context.reset(token)


def current_log_context() -> dict[str, str]:
    """The correlation fields bound now (a copy)."""
    return dict(_context.get() or {})


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A thread pool whose tasks log with the submitter's correlation fields: background work queued
    by a call (a curation run, an evaluation) carries that call's tenant, request id and trace id,
    and its spans are children of the call's span. Only the log fields and the trace context travel
    (not the caller's identity: background work keeps its own)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(_with_log_context, current_log_context(), otel_context.get_current(), fn,
                              *args, **kwargs)


def _with_log_context(fields: dict[str, str], trace_ctx: otel_context.Context, fn: Callable[..., Any],
                      *args: Any, **kwargs: Any) -> Any:
    token = otel_context.attach(trace_ctx)
    try:
        with log_context(**fields):
            return fn(*args, **kwargs)
    finally:
        otel_context.detach(token)


class ContextFilter(logging.Filter):
    """Copies the bound correlation fields onto the record as ``ctx_*`` (explicit extras win), and the
    current span's id as ``ctx_span_id`` (with its trace id where none is bound)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, f"ctx_{key}"):
                setattr(record, f"ctx_{key}", value)
        span = otel_trace.get_current_span().get_span_context()
        if span.is_valid and not hasattr(record, "ctx_span_id"):
            record.ctx_span_id = format(span.span_id, "016x")
            if not hasattr(record, "ctx_trace_id"):
                record.ctx_trace_id = format(span.trace_id, "032x")
        return True


class RedactingFilter(logging.Filter):
    """Renders the message with its args, redacts it, and drops the args."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        for key, value in list(record.__dict__.items()):
            if key.startswith("ctx_") and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ctx_* extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update({k[4:]: v for k, v in record.__dict__.items() if k.startswith("ctx_")})
        if record.exc_text:
            payload["exception"] = record.exc_text
        return json.dumps(payload, default=str)


class _TextFormatter(logging.Formatter):
    """The plain format with the correlation fields appended as ``[key=value ...]``."""

    _KEYS = ("tenant", "method", "request_id", "job_id", "trace_id")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ctx = " ".join(f"{k}={getattr(record, 'ctx_' + k)}" for k in self._KEYS if hasattr(record, f"ctx_{k}"))
        return f"{text} [{ctx}]" if ctx else text


def configure_logging(*, json_lines: bool = False, level: str = "INFO") -> None:
    """Install one stderr handler with redaction on the root logger (idempotent)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_tuneforge", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._tuneforge = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(JsonFormatter() if json_lines else _TextFormatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
