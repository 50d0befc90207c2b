"""The object-store contract every backend implements (``file://`` and ``s3://``).

Domain code depends on ``ObjectStore`` only; ``open_object_store(uri)`` in this package picks the
backend by URI scheme. Keys are ``/``-separated relative paths checked by ``check_key``.
Every object is stored with its sha256; reads verify it and raise ``IntegrityError`` on mismatch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object."""

    key: str
    size: int
    sha256: str
    modified: datetime | None = None


@runtime_checkable
class ObjectStore(Protocol):
    """A bucket-like store of immutable-by-convention objects.

    Implementations stream: no call holds a whole large object in memory.
    """

    uri: str

    def put_stream(self, key: str, stream: BinaryIO, *, size: int | None = None) -> ObjectInfo:
        """Store bytes read from ``stream`` (multipart above a threshold); returns size and sha256."""
        ...

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store a small object."""
        ...

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Store a local file."""
        ...

    def iter_chunks(
        self, key: str, *, offset: int = 0, chunk_size: int = 1 << 20, verify: bool = True
    ) -> Iterator[bytes]:
        """Yield the object's bytes from ``offset``; with ``verify`` (and offset 0) the sha256 is
        checked when the last chunk has been read and ``IntegrityError`` is raised on mismatch."""
        ...

    def get_bytes(self, key: str, *, verify: bool = True) -> bytes:
        """Read a small object whole, verified."""
        ...

    def get_file(self, key: str, dest: Path, *, verify: bool = True) -> ObjectInfo:
        """Download to ``dest`` (written to a temp file then renamed), verified."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Size and recorded sha256; ``NotFound`` when absent."""
        ...

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` (recursive), in key order."""
        ...

    def list_prefixes(self, prefix: str = "") -> Iterator[str]:
        """Immediate child prefixes ``<prefix><name>/`` of ``prefix`` (``""`` or ending in ``/``)
        holding any stored data, committed or not, in key order (one cheap listing call)."""
        ...

    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing object is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many were deleted."""
        ...

    def presigned_get_url(self, key: str, expires: timedelta) -> str:
        """A URL that reads the object without credentials until ``expires`` has passed."""
        ...
