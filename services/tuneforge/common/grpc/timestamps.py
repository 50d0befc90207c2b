"""datetime -> ``google.protobuf.Timestamp``, as every service's converters need it."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A datetime as a protobuf Timestamp (None stays None: the field is left unset)."""
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts
