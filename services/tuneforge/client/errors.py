"""Typed errors of the SDK: one class per gRPC status code, with the server's field violations.

Every SDK call raises a subclass of :class:`ApiError` instead of a raw ``grpc.RpcError``; it is
still a ``grpc.RpcError`` (``code()`` and ``details()`` work as before), so older ``except
grpc.RpcError`` blocks keep working.

    >>> err = InvalidArgument("2 bad fields", violations=[FieldViolation("hyperparameters.max_steps", "must be > 0")])
    >>> isinstance(err, ApiError), err.code().name, err.violations[0].field
    (True, 'INVALID_ARGUMENT', 'hyperparameters.max_steps')
    >>> print(err)
    INVALID_ARGUMENT: 2 bad fields
      - hyperparameters.max_steps: must be > 0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from google.rpc import error_details_pb2, status_pb2

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its dotted path and what is wrong with it (with the fix)."""

    field: str
    description: str


class ApiError(grpc.RpcError):
    """A failed call. Attributes: ``status_code`` (grpc.StatusCode, also ``code()``), ``message``, ``violations``
    (list of :class:`FieldViolation`, for INVALID_ARGUMENT), ``reason`` (machine-readable, may be
    empty), ``method`` (the RPC, e.g. ``/tuneforge.training.v1.TrainingService/CreateJob``),
    ``retry_delay_s`` (the server's ``google.rpc.RetryInfo``, when it sent one: how long to wait before
    trying again)."""

    status_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, violations: Sequence[FieldViolation] = (), reason: str = "",
                 method: str = "", retry_delay_s: float | None = None) -> None:
        super().__init__(message)
        self.message, self.violations, self.reason, self.method = message, list(violations), reason, method
        self.retry_delay_s = retry_delay_s

    def code(self) -> grpc.StatusCode:
        """The status code (the grpc.RpcError interface); also the class attribute ``status_code``."""
        return self.status_code

    def details(self) -> str:
        """The status message (the grpc.RpcError interface)."""
        return self.message

    def __str__(self) -> str:
        lines = [f"{self.status_code.name}: {self.message}"]
        lines += [f"  - {v.field}: {v.description}" for v in self.violations]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (what ``tuneforge --output json`` prints on errors)."""
        return {"code": self.status_code.name, "message": self.message, "reason": self.reason, "method": self.method,
                "violations": [{"field": v.field, "description": v.description} for v in self.violations]}


def _family(code: grpc.StatusCode, doc: str) -> type[ApiError]:
    name = "".join(part.capitalize() for part in code.name.split("_"))
    return type(name, (ApiError,), {"status_code": code, "__doc__": doc, "__module__": __name__})


# One class per status code the services send (the taxonomy in tuneforge.common.errors).
InvalidArgument = _family(grpc.StatusCode.INVALID_ARGUMENT, "The request is malformed; see ``violations``.")
NotFound = _family(grpc.StatusCode.NOT_FOUND, "No such resource (or it belongs to another tenant).")
AlreadyExists = _family(grpc.StatusCode.ALREADY_EXISTS,
                        "A conflicting resource exists (e.g. an idempotency key reused with another body).")
FailedPrecondition = _family(grpc.StatusCode.FAILED_PRECONDITION, "The resource is not in a state that allows it.")
Aborted = _family(grpc.StatusCode.ABORTED, "A concurrent change won; retry the whole operation.")
ResourceExhausted = _family(grpc.StatusCode.RESOURCE_EXHAUSTED, "A quota or size limit was reached.")
Unavailable = _family(grpc.StatusCode.UNAVAILABLE, "The service cannot be reached (retried already).")
Unauthenticated = _family(grpc.StatusCode.UNAUTHENTICATED, "Missing or unknown token.")
PermissionDenied = _family(grpc.StatusCode.PERMISSION_DENIED, "The token may not do this.")
DataLoss = _family(grpc.StatusCode.DATA_LOSS, "Stored or downloaded bytes do not match their checksum.")
Cancelled = _family(grpc.StatusCode.CANCELLED, "The call was cancelled.")
DeadlineExceeded = _family(grpc.StatusCode.DEADLINE_EXCEEDED, "The call ran past its deadline.")
Unimplemented = _family(grpc.StatusCode.UNIMPLEMENTED, "The server does not implement this call.")
Internal = _family(grpc.StatusCode.INTERNAL, "A server bug; the message has an incident id for the logs.")
Unknown = _family(grpc.StatusCode.UNKNOWN, "An error the server did not classify.")
OutOfRange = _family(grpc.StatusCode.OUT_OF_RANGE, "A value is out of range.")

_BY_CODE: dict[grpc.StatusCode, type[ApiError]] = {
    cls.status_code: cls for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Aborted,
                              ResourceExhausted, Unavailable, Unauthenticated, PermissionDenied, DataLoss,
                              Cancelled, DeadlineExceeded, Unimplemented, Internal, Unknown, OutOfRange)}


def error_class(code: grpc.StatusCode) -> type[ApiError]:
    """The :class:`ApiError` subclass for a status code."""
    return _BY_CODE.get(code, Unknown)


def from_rpc_error(exc: grpc.RpcError, method: str = "") -> ApiError:
    """Translate a raw ``grpc.RpcError`` (sync or ``grpc.aio``) into its typed :class:`ApiError`."""
    if isinstance(exc, ApiError):
        return exc
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
    message = exc.details() if callable(getattr(exc, "details", None)) else str(exc)  # type: ignore[attr-defined]
    violations, reason, retry_delay = _status_details(exc)
    return error_class(code)(message or code.name, violations=violations, reason=reason, method=method,
                             retry_delay_s=retry_delay)


def _status_details(exc: grpc.RpcError) -> tuple[list[FieldViolation], str, float | None]:
    trailers = exc.trailing_metadata() if callable(getattr(exc, "trailing_metadata", None)) else None  # type: ignore[attr-defined]
    raw = next((v for k, v in (trailers or ()) if k == _STATUS_DETAILS_KEY), None)
    if not raw:
        return [], "", None
    status = status_pb2.Status.FromString(raw)
    violations: list[FieldViolation] = []
    reason = ""
    retry_delay: float | None = None
    for detail in status.details:
        bad, info, retry = error_details_pb2.BadRequest(), error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if detail.Unpack(bad):
            violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(retry):
            retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
    return violations, reason, retry_delay


__all__ = ["Aborted", "AlreadyExists", "ApiError", "Cancelled", "DataLoss", "DeadlineExceeded",
           "FailedPrecondition", "FieldViolation", "Internal", "InvalidArgument", "NotFound", "OutOfRange",
           "PermissionDenied", "ResourceExhausted", "Unauthenticated", "Unavailable", "Unimplemented", "Unknown",
           "error_class", "from_rpc_error"]
