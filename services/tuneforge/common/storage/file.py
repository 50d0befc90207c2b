"""``file:///abs/dir``: an object store on a local (or shared POSIX) filesystem.

Layout under the root: ``<key>`` holds the bytes, ``.meta/<key>`` the JSON sidecar with size and
sha256 (the commit marker, see ``_internal``), ``.tmp/`` the files being written. Every write goes
to a temp file that is fsync'ed and then ``os.replace``d into place, so a reader never sees a
half-written object; the sidecar is replaced last.

``presigned_get_url`` returns a plain ``file://`` URL: it is NOT access-controlled and its expiry
is NOT enforced. Anyone who can read the store's directory can read the object anyway, so the URL
grants nothing new; deployments that need expiring, access-controlled links use ``s3://``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from tuneforge.common.errors import AlreadyExists, IntegrityError, InvalidInput, NotFound
from tuneforge.common.public_text import echo
from tuneforge.common.storage._internal import (
    META_ROOT,
    TMP_ROOT,
    BytesReader,
    HashingReader,
    Sidecar,
    check_declared_size,
    check_offset,
    utc_from_timestamp,
    verified_chunks,
    write_chunks_atomically,
)
from tuneforge.common.storage.base import ObjectInfo
from tuneforge.common.storage.keys import check_key, check_prefix

log = logging.getLogger(__name__)
# A part file untouched this long belongs to a writer that died (writes keep theirs fresh).
STALE_PART_S = 3600.0

_COPY_CHUNK = 1 << 20


class FileObjectStore:
    """Objects as files under ``root``; see the module docstring for the layout.

    Args:
        root: absolute directory; created if missing. Start-up writes and removes a probe file so
            that an unwritable root fails here, not at the first request.
    """

    def __init__(self, root: Path, *, setting: str = "object_store_uri") -> None:
        self._setting = setting
        if not root.is_absolute():
            raise InvalidInput.field_error(
                setting, f"file store root {echo(str(root))} is relative: use file:///absolute/dir"
            )
        self.root = root
        self.uri = root.as_uri()
        self._meta = root / META_ROOT.rstrip("/")
        self._tmp = root / TMP_ROOT.rstrip("/")
        self._check_writable()
        self.sweep_stale_parts()

    def sweep_stale_parts(self, older_than_s: float = STALE_PART_S) -> int:
        """Remove half-written files a killed writer left in ``.tmp/`` (by age: several services
        may share this store, and a write in progress keeps its file's mtime fresh)."""
        cutoff, removed = time.time() - older_than_s, 0
        for part in self._tmp.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_mtime < cutoff:
                    part.unlink()
                    removed += 1
        if removed:
            log.warning("removed %d stale partial file(s) from the file store's .tmp folder", removed)
        return removed

    def _check_writable(self) -> None:
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
            self._meta.mkdir(parents=True, exist_ok=True)
            probe = self._tmp / f"probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise InvalidInput.field_error(
                self._setting,
                f"file store root {echo(str(self.root))} is not writable ({exc.strerror}): "
                "create it and give this service write access",
            ) from exc

    # ---- paths -------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self._inside(self.root / check_key(key), key)

    def _meta_path(self, key: str) -> Path:
        return self._inside(self._meta / check_key(key), key)

    def _inside(self, path: Path, key: str) -> Path:
        # check_key already refuses traversal; this also catches symlinks planted inside the root.
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise InvalidInput.field_error("key", f"object key {echo(key)} resolves outside the store root")
        return path

    # ---- writes ------------------------------------------------------------------------------

    def _atomic_write(self, key: str, dest: Path, stream: BinaryIO | HashingReader | BytesReader) -> None:
        """Copy ``stream`` to a temp file, fsync it, then rename it onto ``dest``."""
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        try:
            with tmp.open("wb") as out:
                while chunk := stream.read(_COPY_CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            self._make_parent(key, dest)
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _make_parent(self, key: str, dest: Path) -> None:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise AlreadyExists(
                f"cannot store {echo(key)}: a parent of it is already an object; in file:// stores a key "
                "cannot be both an object and a prefix of another key: rename one of them"
            ) from exc
        if dest.is_dir():
            raise AlreadyExists(
                f"cannot store {echo(key)}: it is already a prefix of other keys; rename the object"
            )

    def put_stream(self, key: str, stream: BinaryIO, *, size: int | None = None) -> ObjectInfo:
        """Store bytes read from ``stream``; returns the size and sha256 recorded."""
        data_path, meta_path = self._path(key), self._meta_path(key)
        reader = HashingReader(stream)
        self._atomic_write(key, data_path, reader)
        try:
            check_declared_size(key, size, reader.size)
        except InvalidInput:
            data_path.unlink(missing_ok=True)
            raise
        sidecar = Sidecar(size=reader.size, sha256=reader.sha256)
        self._atomic_write(key, meta_path, BytesReader(sidecar.to_json()))
        return self.stat(key)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store a small object."""
        return self.put_stream(key, BytesReader(data), size=len(data))  # type: ignore[arg-type]

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Store a local file."""
        with path.open("rb") as fh:
            return self.put_stream(key, fh, size=os.fstat(fh.fileno()).st_size)

    # ---- reads -------------------------------------------------------------------------------

    def _sidecar(self, key: str) -> Sidecar:
        try:
            return Sidecar.from_json(key, self._meta_path(key).read_bytes())
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(f"object {echo(key)} does not exist in {self.uri}") from exc

    def _open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise IntegrityError(
                f"object {echo(key)} has a checksum record but its data file is missing: re-upload it",
                reason="DATA_MISSING",
            ) from exc

    def iter_chunks(
        self, key: str, *, offset: int = 0, chunk_size: int = 1 << 20, verify: bool = True
    ) -> Iterator[bytes]:
        """Yield the object's bytes from ``offset``; verifies the sha256 at the end (offset 0 only).

        Raises (eagerly, before the first chunk): ``NotFound``, ``InvalidInput`` for a bad key or
        offset. ``IntegrityError`` is raised after the last chunk when the bytes do not match.
        """
        check_verify = check_offset(offset, verify)
        sidecar = self._sidecar(key)
        fh = self._open(key)
        chunks = _read_chunks(fh, offset, chunk_size)
        return verified_chunks(key, chunks, sidecar) if check_verify else chunks

    def get_bytes(self, key: str, *, verify: bool = True) -> bytes:
        """Read a small object whole, verified."""
        return b"".join(self.iter_chunks(key, verify=verify))

    def get_file(self, key: str, dest: Path, *, verify: bool = True) -> ObjectInfo:
        """Download to ``dest`` through a temp file in the same folder, verified."""
        chunks = self.iter_chunks(key, verify=verify)
        return write_chunks_atomically(chunks, dest, self.stat(key))

    def stat(self, key: str) -> ObjectInfo:
        """Recorded size and sha256; ``NotFound`` when absent."""
        sidecar = self._sidecar(key)
        modified = utc_from_timestamp(self._meta_path(key).stat().st_mtime)
        return ObjectInfo(key=key, size=sidecar.size, sha256=sidecar.sha256, modified=modified)

    def exists(self, key: str) -> bool:
        """Whether a committed object exists at ``key``."""
        return self._meta_path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Committed objects under the string ``prefix``, in key order."""
        for key in _walk_keys(self._meta, check_prefix(prefix)):
            with contextlib.suppress(NotFound):  # deleted while we listed
                yield self.stat(key)

    def list_prefixes(self, prefix: str = "") -> Iterator[str]:
        """Immediate child prefixes (``<prefix><name>/``) holding any stored data, in key order."""
        base = self.root / check_prefix(prefix) if prefix else self.root
        if prefix and not prefix.endswith("/"):
            raise InvalidInput.field_error("prefix", f"prefix {echo(prefix)} must end with '/'")
        try:
            names = sorted(e.name for e in os.scandir(base) if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in names:
            if prefix or name + "/" not in (META_ROOT, TMP_ROOT):
                yield f"{prefix}{name}/"

    # ---- deletes -----------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        """Delete one object (sidecar first, so it vanishes from listings at once)."""
        for path in (self._meta_path(key), self._path(key)):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
                path.unlink()
            self._prune_empty_parents(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (and leftover uncommitted data); returns the count."""
        if not check_prefix(prefix):
            raise InvalidInput.field_error("prefix", "refusing to delete the whole store: give a prefix")
        count = 0
        for info in list(self.list(prefix)):
            self.delete(info.key)
            count += 1
        for key in list(_walk_keys(self.root, prefix, skip_roots=(META_ROOT, TMP_ROOT))):
            self.delete(key)
        return count

    def _prune_empty_parents(self, folder: Path) -> None:
        stops = {self.root, self._meta, self._tmp}
        while folder not in stops and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def presigned_get_url(self, key: str, expires: timedelta) -> str:
        """A ``file://`` URL of the object. NOT access-controlled, and ``expires`` is NOT enforced.

        Raises:
            NotFound: the object does not exist.
        """
        self.stat(key)
        return self._path(key).as_uri()


def _read_chunks(fh: BinaryIO, offset: int, chunk_size: int) -> Iterator[bytes]:
    with fh:
        fh.seek(offset)
        while chunk := fh.read(chunk_size):
            yield chunk


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _walk_keys(top: Path, prefix: str, skip_roots: tuple[str, ...] = ()) -> Iterator[str]:
    """Yield the keys of files under ``top`` starting with ``prefix``, in key (string) order."""
    start_dir = prefix.rpartition("/")[0]
    folder = top / start_dir if start_dir else top
    rel = f"{start_dir}/" if start_dir else ""
    for key in _walk_sorted(folder, rel):
        if key.startswith(prefix) and not any(key.startswith(root) for root in skip_roots):
            yield key


def _walk_sorted(folder: Path, rel: str) -> Iterator[str]:
    # Sorting directory names with a trailing '/' makes the depth-first walk come out in the same
    # order as sorting the full keys as strings (what S3 listings return).
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    named = sorted((e.name + ("/" if e.is_dir(follow_symlinks=False) else ""), e) for e in entries)
    for name, _entry in named:
        if name.endswith("/"):
            yield from _walk_sorted(folder / name[:-1], rel + name)
        else:
            yield rel + name
