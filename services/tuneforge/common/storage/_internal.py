"""Pieces shared by the ``file://`` and ``s3://`` stores (internal: may change).

Both stores keep, for every object ``<key>``, a small JSON *sidecar* at ``.meta/<key>`` holding
the object's size and sha256. The sidecar is written after the data and acts as the object's
commit marker: listings enumerate sidecars, so an object whose upload never finished is
invisible. Why a sidecar and not S3 user metadata: with a streamed multipart upload the sha256
is only known after the last part, when the metadata can no longer be set; fixing it up with a
server-side ``copy_object`` rewrites the whole object (doubling the I/O of multi-GB checkpoint
shards, and needing a multipart copy above 5 GiB) and still leaves a window where the object
exists without a checksum. The sidecar costs one small PUT and keeps key order (``.meta/`` +
key sorts exactly like the keys), so the stores can list in key order while streaming.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from tuneforge.common.errors import IntegrityError, InvalidInput
from tuneforge.common.public_text import echo
from tuneforge.common.storage.base import ObjectInfo

META_ROOT = ".meta/"
TMP_ROOT = ".tmp/"
SIDECAR_SCHEMA = 1


def meta_key(key: str) -> str:
    """The sidecar key recording ``key``'s size and sha256."""
    return META_ROOT + key


@dataclass(frozen=True)
class Sidecar:
    """What the store recorded about one object when it was written."""

    size: int
    sha256: str

    def to_json(self) -> bytes:
        doc = {"schema": SIDECAR_SCHEMA, "size": self.size, "sha256": self.sha256}
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, key: str, data: bytes) -> Sidecar:
        """Parse a sidecar; a damaged one is an ``IntegrityError`` naming ``key``."""
        try:
            doc = json.loads(data)
            size, sha = int(doc["size"]), str(doc["sha256"])
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(
                f"the checksum record of object {echo(key)} is damaged ({exc}): re-upload the object",
                reason="METADATA_CORRUPT",
            ) from exc
        return cls(size=size, sha256=sha)


class HashingReader:
    """Wraps a binary stream; hashes and counts bytes as they are read (for streamed uploads)."""

    def __init__(self, stream: BinaryIO, *, key: str = "", expected_size: int | None = None) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self._key = key
        self._expected = expected_size
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        # Fill the request fully (until EOF): minio concatenates short reads into each part with
        # ``bytes +=``, which turns many small reads into quadratic copying.
        if n is None or n < 0:
            data = self._stream.read()
        else:
            pieces: list[bytes] = []
            missing = n
            while missing > 0 and (piece := self._stream.read(missing)):
                pieces.append(piece)
                missing -= len(piece)
            data = b"".join(pieces)
        self._hash.update(data)
        self.size += len(data)
        eof = n is None or n < 0 or len(data) < n
        if eof and self._expected is not None:
            check_declared_size(self._key, self._expected, self.size)
        return data

    def at_eof(self) -> bool:
        """Whether the wrapped stream has no more bytes (reads one byte to find out)."""
        extra = self._stream.read(1)
        if extra:
            self.size += len(extra)
        return not extra

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class BytesReader:
    """A minimal ``read()`` over bytes (``io.BytesIO`` would copy them once more)."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n is None or n < 0 else self._pos + n
        out = bytes(self._view[self._pos : end])
        self._pos += len(out)
        return out


def verify(key: str, expected: Sidecar, size: int, sha256: str) -> None:
    """Raise ``IntegrityError`` naming ``key`` when the bytes read differ from the record."""
    if size != expected.size:
        raise IntegrityError(
            f"object {echo(key)} is {size} bytes but {expected.size} were recorded when it was written: "
            "the stored copy is truncated or was overwritten; re-upload it",
            reason="SIZE_MISMATCH",
        )
    if sha256 != expected.sha256:
        raise IntegrityError(
            f"object {echo(key)} has sha256 {sha256} but {expected.sha256} was recorded when it was "
            "written: the stored copy is corrupt or was tampered with; re-upload it",
            reason="CHECKSUM_MISMATCH",
        )


def verified_chunks(key: str, chunks: Iterator[bytes], expected: Sidecar) -> Iterator[bytes]:
    """Pass ``chunks`` through, then verify their total size and sha256 against ``expected``."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        yield chunk
    verify(key, expected, size, digest.hexdigest())


def check_declared_size(key: str, declared: int | None, actual: int) -> None:
    """Raise when a caller announced ``size`` but the stream held a different number of bytes."""
    if declared is not None and declared != actual:
        raise InvalidInput.field_error(
            "size",
            f"the stream for {echo(key)} held {actual} bytes but size={declared} was given: "
            "pass the exact size or None",
        )


def check_offset(offset: int, verify_requested: bool) -> bool:
    """Validate a read offset; returns whether verification applies (only from offset 0)."""
    if offset < 0:
        raise InvalidInput.field_error("offset", f"offset {offset} is negative: give 0 or more")
    return verify_requested and offset == 0


def utc_from_timestamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def write_chunks_atomically(chunks: Iterator[bytes], dest: Path, info: ObjectInfo) -> ObjectInfo:
    """Write ``chunks`` to ``dest`` via a temp file in the same folder."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        with tmp.open("wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return info
