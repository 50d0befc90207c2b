"""One error taxonomy for every tuneforge service and the engine.

Domain code raises these; the gRPC error interceptor (``tuneforge.common.grpc.interceptors``)
maps each family to one status code through ``STATUS_BY_FAMILY``. Anything that is not a
``TuneforgeError`` becomes INTERNAL with a generic message: details go to the log only.

Messages say cause and remedy ("... is not a multiple of 8: set micro_batch_size to 8 or 16").
Errors pickle cleanly so that they cross Ray task boundaries intact (see tests/unit/test_errors.py).

This module imports neither grpc nor anything heavy, so the domain and the engine may use it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class ErrorFamily(enum.Enum):
    """The families of errors; each maps to one gRPC status code."""

    INVALID_INPUT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    DATA_LOSS = "DATA_LOSS"
    CANCELLED = "CANCELLED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: ``field`` is a dotted path (``hyperparameters.learning_rate``, ``rows[12].messages``)."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class TuneforgeError(Exception):
    """Base of every error tuneforge raises on purpose.

    Args:
        message: cause and remedy, safe to show to the caller (never a secret, never a trace).
        violations: field violations (INVALID_INPUT errors carry them as google.rpc.BadRequest).
        reason: a short machine-readable reason, e.g. ``CHECKSUM_MISMATCH``.
        metadata: machine-readable facts of the error (google.rpc.ErrorInfo metadata, sent with
            ``reason``), e.g. the bytes a job needs and the bytes a device has.
    """

    family: ErrorFamily = ErrorFamily.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        violations: Sequence[FieldViolation] = (),
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})

    # Exceptions with keyword-only constructor arguments do not survive pickle by default
    # (BaseException.__reduce__ replays positional args only); Ray pickles errors across workers.
    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.violations, self.reason, self.metadata))

    @property
    def field(self) -> str | None:
        """The first violated field, if any (what a job's ``error.field`` shows)."""
        return self.violations[0].field if self.violations else None

    def __str__(self) -> str:
        details = "; ".join(str(v) for v in self.violations if v.description not in self.message)
        return f"{self.message} ({details})" if details else self.message


def _rebuild(
    cls: type[TuneforgeError], message: str, violations: tuple[FieldViolation, ...], reason: str,
    metadata: Mapping[str, str] | None = None,
) -> TuneforgeError:
    err = cls.__new__(cls)
    TuneforgeError.__init__(err, message, violations=violations, reason=reason, metadata=metadata)
    return err


class InvalidInput(TuneforgeError):
    """The request or data is malformed; the violations name each bad field and the fix."""

    family = ErrorFamily.INVALID_INPUT

    @classmethod
    def of(cls, violations: Iterable[FieldViolation], what: str = "request") -> InvalidInput:
        """Build one error reporting every violation at once."""
        vs = list(violations)
        noun = "problem" if len(vs) == 1 else "problems"
        return cls(f"invalid {what}: {len(vs)} {noun}", violations=vs)

    @classmethod
    def field_error(cls, field: str, description: str) -> InvalidInput:
        """Build an error for a single bad field."""
        return cls(f"invalid {field}: {description}", violations=[FieldViolation(field, description)])


class NotFound(TuneforgeError):
    """The named resource does not exist (or belongs to another tenant)."""

    family = ErrorFamily.NOT_FOUND


class AlreadyExists(TuneforgeError):
    """A resource with that name or idempotency key already exists with different content."""

    family = ErrorFamily.ALREADY_EXISTS


class FailedPrecondition(TuneforgeError):
    """The system is not in a state where this is allowed (e.g. deleting a dataset a job uses)."""

    family = ErrorFamily.FAILED_PRECONDITION


class Aborted(TuneforgeError):
    """A concurrency conflict; retrying the whole operation may succeed."""

    family = ErrorFamily.ABORTED


class ResourceExhausted(TuneforgeError):
    """A limit or quota was hit (file size, row count, removal guard, memory)."""

    family = ErrorFamily.RESOURCE_EXHAUSTED


class Unavailable(TuneforgeError):
    """A dependency (object store, database, Ray) cannot be reached; retry with backoff."""

    family = ErrorFamily.UNAVAILABLE


class Unauthenticated(TuneforgeError):
    """No valid credentials were presented."""

    family = ErrorFamily.UNAUTHENTICATED


class PermissionDenied(TuneforgeError):
    """The caller is authenticated but not allowed to do this."""

    family = ErrorFamily.PERMISSION_DENIED


class IntegrityError(TuneforgeError):
    """Stored bytes do not match their recorded size or sha256 (corruption or tampering)."""

    family = ErrorFamily.DATA_LOSS


class Cancelled(TuneforgeError):
    """The operation was cancelled by the user."""

    family = ErrorFamily.CANCELLED


class DeadlineExceeded(TuneforgeError):
    """The operation did not finish in its allotted time."""

    family = ErrorFamily.DEADLINE_EXCEEDED


class Unimplemented(TuneforgeError):
    """The operation is part of the API but not implemented by this server yet."""

    family = ErrorFamily.UNIMPLEMENTED


class Internal(TuneforgeError):
    """A bug or an unexpected state; the message shown to callers stays generic."""

    family = ErrorFamily.INTERNAL
