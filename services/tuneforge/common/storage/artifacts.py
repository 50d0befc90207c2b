"""Multi-object artifacts (checkpoints, curated datasets, eval reports) written manifest-last.

An artifact is every object under a prefix such as ``tenants/acme/checkpoints/ck-1/``, plus a
``MANIFEST.json`` listing each file with its size and sha256. The manifest is written LAST, so an
artifact either has a manifest and all its files, or is invisible: ``list_artifacts`` only returns
prefixes with a manifest, and ``gc_orphans`` removes what crashed writers left behind.

Manifest JSON (schema_version 1)::

    {"schema_version": 1, "created_at": "2025-01-01T00:00:00+00:00",
     "files": [{"path": "model.safetensors", "size": 123, "sha256": "..."}],
     "extra": {...caller's fields: step, metrics, resolved config, lineage...}}

Caller fields live under ``extra`` so they can never collide with the manifest's own fields.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from tuneforge.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
    NotFound,
)
from tuneforge.common.public_text import echo
from tuneforge.common.storage.base import ObjectInfo, ObjectStore
from tuneforge.common.storage.keys import check_key, check_prefix

log = logging.getLogger(__name__)

MANIFEST_NAME = "MANIFEST.json"
MANIFEST_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ManifestFile:
    """One file of an artifact: ``path`` is relative to the artifact prefix."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What an artifact holds; written last, read to find and verify artifacts."""

    files: tuple[ManifestFile, ...]
    created_at: datetime
    extra: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = MANIFEST_SCHEMA_VERSION

    @property
    def total_size(self) -> int:
        """Sum of the files' sizes in bytes."""
        return sum(f.size for f in self.files)

    def same_content(self, other: Manifest) -> bool:
        """Same files (path, size, sha256) and same extra fields; ``created_at`` is ignored."""
        return self.files == other.files and _normalized(self.extra) == _normalized(other.extra)

    def to_json(self) -> bytes:
        doc = {
            "schema_version": self.schema_version,
            "created_at": self.created_at.isoformat(),
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            "extra": dict(self.extra),
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, where: str, data: bytes) -> Manifest:
        """Parse a manifest; ``where`` (its key) is named in errors."""
        try:
            doc = json.loads(data)
            version = int(doc["schema_version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(
                f"manifest {echo(where)} is not valid JSON with a schema_version: {exc}",
                reason="MANIFEST_CORRUPT",
            ) from exc
        if version > MANIFEST_SCHEMA_VERSION:
            raise FailedPrecondition(
                f"manifest {echo(where)} has schema_version {version}, newer than this release reads "
                f"({MANIFEST_SCHEMA_VERSION}): upgrade tuneforge"
            )
        try:
            files = tuple(
                ManifestFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in doc["files"]
            )
            created = datetime.fromisoformat(doc["created_at"])
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(
                f"manifest {echo(where)} is damaged ({echo(exc)}): rewrite the artifact", reason="MANIFEST_CORRUPT"
            ) from exc
        return cls(files=files, created_at=created, extra=doc.get("extra", {}), schema_version=version)


def _normalized(extra: Mapping[str, Any]) -> Any:
    return json.loads(json.dumps(dict(extra), sort_keys=True))


def artifact_prefix(prefix: str, *, field_name: str = "prefix") -> str:
    """Validate an artifact prefix and return it ending with ``/``."""
    if not prefix:
        raise InvalidInput.field_error(field_name, "an artifact prefix is required, e.g. 'tenants/a/ck/1/'")
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    return check_prefix(prefix, field=field_name)


class ArtifactWriter:
    """Adds files under ``prefix``, then ``commit`` writes the manifest last.

    Args:
        store: where the artifact goes.
        prefix: the artifact's prefix (a trailing ``/`` is added if missing).

    Raises:
        AlreadyExists: an artifact is already committed at ``prefix``.
    """

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.prefix = artifact_prefix(prefix)
        self._files: dict[str, ManifestFile] = {}
        self._committed = False
        self._refuse_if_committed()

    def _refuse_if_committed(self) -> None:
        if self.store.exists(self.prefix + MANIFEST_NAME):
            raise AlreadyExists(
                f"an artifact is already committed at {echo(self.prefix)}: write to a new prefix "
                "(artifacts are immutable)"
            )

    def _key(self, name: str) -> str:
        if self._committed:
            raise FailedPrecondition(f"artifact {echo(self.prefix)} is already committed: start a new writer")
        check_key(name, field="name")
        if name == MANIFEST_NAME:
            raise InvalidInput.field_error("name", f"{MANIFEST_NAME} is reserved for the manifest")
        if name in self._files:
            raise InvalidInput.field_error("name", f"{echo(name)} was already added to {echo(self.prefix)}")
        return self.prefix + name

    def _record(self, name: str, info: ObjectInfo) -> ObjectInfo:
        self._files[name] = ManifestFile(path=name, size=info.size, sha256=info.sha256)
        return info

    def add_stream(self, name: str, stream: BinaryIO, *, size: int | None = None) -> ObjectInfo:
        """Upload ``stream`` as ``<prefix><name>``."""
        return self._record(name, self.store.put_stream(self._key(name), stream, size=size))

    def add_bytes(self, name: str, data: bytes) -> ObjectInfo:
        """Upload small ``data`` as ``<prefix><name>``."""
        return self._record(name, self.store.put_bytes(self._key(name), data))

    def add_file(self, name: str, path: Path) -> ObjectInfo:
        """Upload the local file ``path`` as ``<prefix><name>``."""
        return self._record(name, self.store.put_file(self._key(name), path))

    def adopt(self, name: str) -> ObjectInfo:
        """Record an object already stored at ``<prefix><name>`` (e.g. by an interrupted writer)."""
        return self._record(name, self.store.stat(self._key(name)))

    def commit(self, manifest_extra: Mapping[str, Any] | None = None) -> Manifest:
        """Write ``MANIFEST.json`` (last), making the artifact visible.

        Args:
            manifest_extra: JSON-serializable caller fields (step, metrics, config, lineage).

        Raises:
            InvalidInput: no file was added, or ``manifest_extra`` is not JSON-serializable.
            AlreadyExists: another writer committed this prefix meanwhile.
        """
        if not self._files:
            raise InvalidInput.field_error("files", f"artifact {echo(self.prefix)} has no files: add some first")
        manifest = Manifest(
            files=tuple(self._files[name] for name in sorted(self._files)),
            created_at=datetime.now(UTC),
            extra=dict(manifest_extra or {}),
        )
        try:
            data = manifest.to_json()
        except (TypeError, ValueError) as exc:
            raise InvalidInput.field_error("manifest_extra", f"is not JSON-serializable: {exc}") from exc
        if self.store.exists(self.prefix + MANIFEST_NAME):
            return self._already_committed(manifest)
        self.store.put_bytes(self.prefix + MANIFEST_NAME, data)
        self._committed = True
        return manifest

    def _already_committed(self, manifest: Manifest) -> Manifest:
        # A retried commit whose first PUT landed (answer lost) finds its own manifest: fine.
        existing = read_manifest(self.store, self.prefix)
        if not existing.same_content(manifest):
            self._refuse_if_committed()
        self._committed = True
        return existing

    def abort(self) -> int:
        """Delete what was uploaded (before commit); returns how many objects were deleted."""
        if self._committed:
            raise FailedPrecondition(f"artifact {echo(self.prefix)} is committed: delete it explicitly")
        return self.store.delete_prefix(self.prefix)


def read_manifest(store: ObjectStore, prefix: str) -> Manifest:
    """Read and verify the manifest of the artifact at ``prefix``.

    Raises:
        NotFound: no committed artifact there (never written, or still being written).
        IntegrityError: the manifest is damaged.
    """
    key = artifact_prefix(prefix) + MANIFEST_NAME
    try:
        data = store.get_bytes(key)
    except NotFound as exc:
        raise NotFound(
            f"no committed artifact at {echo(prefix)} in {store.uri}: it was never written, is still "
            "being written, or was deleted"
        ) from exc
    return Manifest.from_json(key, data)


def list_artifacts(store: ObjectStore, parent_prefix: str) -> list[str]:
    """Prefixes directly under ``parent_prefix`` that hold a committed artifact, in key order."""
    parent = artifact_prefix(parent_prefix, field_name="parent_prefix")
    return [child for child in store.list_prefixes(parent) if store.exists(child + MANIFEST_NAME)]


def verify_artifact(store: ObjectStore, prefix: str, *, chunk_size: int = 1 << 20) -> Manifest:
    """Re-read every file of the artifact and check its size and sha256 against the manifest.

    Raises:
        NotFound: no committed artifact at ``prefix``.
        IntegrityError: a file is missing, or its size or sha256 differs; names the file.
    """
    prefix = artifact_prefix(prefix)
    manifest = read_manifest(store, prefix)
    for entry in manifest.files:
        _verify_file(store, prefix, entry, chunk_size)
    return manifest


def _verify_file(store: ObjectStore, prefix: str, entry: ManifestFile, chunk_size: int) -> None:
    key = prefix + entry.path
    try:
        chunks = store.iter_chunks(key, chunk_size=chunk_size, verify=False)
    except NotFound as exc:
        raise IntegrityError(
            f"file {echo(entry.path)} of artifact {echo(prefix)} is listed in its manifest but "
            "missing from the store: restore it or rewrite the artifact",
            reason="DATA_MISSING",
        ) from exc
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    if (size, digest.hexdigest()) != (entry.size, entry.sha256):
        raise IntegrityError(
            f"file {echo(entry.path)} of artifact {echo(prefix)} is {size} bytes with sha256 {digest.hexdigest()}, "
            f"but the manifest records {entry.size} bytes with sha256 {entry.sha256}: the stored copy is "
            "corrupt or was replaced; restore it or rewrite the artifact",
            reason="CHECKSUM_MISMATCH",
        )


def gc_orphans(
    store: ObjectStore, parent_prefix: str, older_than: timedelta, *, now: datetime | None = None
) -> list[str]:
    """Delete artifact prefixes under ``parent_prefix`` that have no manifest and are stale.

    A prefix is stale when its newest object is older than ``older_than``; choose it longer than
    the slowest single-file upload so that a writer still at work is never collected.

    Returns:
        The prefixes deleted, in key order.
    """
    parent = artifact_prefix(parent_prefix, field_name="parent_prefix")
    cutoff = (now or datetime.now(UTC)) - older_than
    deleted = []
    for child in store.list_prefixes(parent):
        if store.exists(child + MANIFEST_NAME):
            continue
        newest = _newest(store.list(child))
        if newest is None:
            log.info("gc: %s holds only uncommitted data; leaving it (age unknown)", child)
        elif newest < cutoff:
            count = store.delete_prefix(child)
            log.info("gc: deleted orphan artifact %s (%d objects, newest %s)", child, count, newest)
            deleted.append(child)
    return deleted


def _newest(infos: Iterator[ObjectInfo]) -> datetime | None:
    stamps = [i.modified for i in infos if i.modified is not None]
    return max(stamps) if stamps else None
