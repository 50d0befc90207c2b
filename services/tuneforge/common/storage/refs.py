"""A folder in the object store by reference: what crosses to Ray tasks instead of a local path.

A ``StoredFolder`` names the store, the folder's key prefix and every file with its size and
sha256 (from the artifact's manifest), so a worker on any node can fetch exactly those bytes into
its own cache and check them, with no volume shared with the service that sent it. Plain data:
it pickles across Ray and holds no credentials (workers read theirs from their environment).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tuneforge.common.errors import IntegrityError, InvalidInput
from tuneforge.common.storage.base import ObjectStore
from tuneforge.common.storage.keys import check_key


@dataclass(frozen=True)
class StoredFile:
    """One file of a stored folder: its path below the folder, size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class StoredFolder:
    """Files under ``prefix`` in the store at ``store_uri`` (no credentials in it)."""

    store_uri: str
    prefix: str
    files: tuple[StoredFile, ...]

    @property
    def digest(self) -> str:
        """sha256 of the file list (paths, sizes, sha256s): the cache folder's name."""
        listing = sorted((f.path, f.size, f.sha256) for f in self.files)
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def fetch_folder(store: ObjectStore, folder: StoredFolder, cache_root: Path) -> Path:
    """The folder in ``cache_root/<digest>``: each file downloaded once and checked against its sha256.

    Raises:
        InvalidInput: a file path leaves the folder.
        IntegrityError: a stored file differs from the size or sha256 the reference records.
    """
    dest_root = cache_root / folder.digest
    for f in folder.files:
        parts = PurePosixPath(f.path).parts
        if not parts or ".." in parts or PurePosixPath(f.path).is_absolute():
            raise InvalidInput.field_error("files", f"{f.path!r} is not a path inside the folder")
        dest = dest_root.joinpath(*parts)
        if dest.is_file() and dest.stat().st_size == f.size and _sha256(dest) == f.sha256:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        key = check_key(folder.prefix.rstrip("/") + "/" + f.path)
        info = store.get_file(key, dest)
        if (info.size, info.sha256) != (f.size, f.sha256):
            dest.unlink(missing_ok=True)
            raise IntegrityError(
                f"{key} is {info.size} bytes with sha256 {info.sha256}, but the reference records {f.size} bytes "
                f"with sha256 {f.sha256}: the stored copy was replaced or is corrupt; rewrite the artifact",
                reason="CHECKSUM_MISMATCH")
    return dest_root


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
