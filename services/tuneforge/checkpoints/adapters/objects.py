"""``CheckpointFiles`` on a ``tuneforge.common.storage`` object store.

Layout: ``tenants/<tenant>/checkpoints/<prefix>/`` holds the files the engine wrote with
``CheckpointWriter`` (and its ``MANIFEST.json``); the service adds ``CHECKPOINT.json`` (its own
manifest: id, step, metrics, lineage) when the registration commits. Every key is built here from
the tenant and checked by ``check_key``, so no request can reach another tenant's prefix.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from datetime import timedelta

from tuneforge.checkpoints.domain.model import FileEntry, Manifest
from tuneforge.checkpoints.domain.ports import StoredFile
from tuneforge.common.errors import IntegrityError, NotFound
from tuneforge.common.public_text import echo
from tuneforge.common.storage import ObjectStore, check_key, tenant_prefix

log = logging.getLogger(__name__)

CHECKPOINT_MANIFEST = "CHECKPOINT.json"
"""The service's manifest object, written last by a registration."""


def checkpoints_root(tenant: str) -> str:
    """``tenants/<tenant>/checkpoints/``: everything of a tenant's checkpoints lives below."""
    return f"{tenant_prefix(tenant)}checkpoints/"


def folder_key(tenant: str, prefix: str) -> str:
    """The key prefix (ending in ``/``) of a checkpoint folder."""
    return check_key(checkpoints_root(tenant) + prefix.strip("/"), field="prefix") + "/"


class StoreCheckpointFiles:
    """Checkpoint files in ``store``, confined to each tenant's checkpoint root.

    Args:
        store: the object store (``file://`` or ``s3://``).
    """

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def _key(self, tenant: str, prefix: str, path: str) -> str:
        return check_key(folder_key(tenant, prefix) + path, field="files.path")

    def stat(self, tenant: str, prefix: str, path: str) -> StoredFile | None:
        """Size and sha256 recorded by the store, or None when the object is not committed."""
        try:
            info = self.store.stat(self._key(tenant, prefix, path))
        except NotFound:
            return None
        return StoredFile(size=info.size, sha256=info.sha256)

    def write_manifest(self, tenant: str, manifest: Manifest) -> None:
        """Write ``CHECKPOINT.json`` into the checkpoint folder."""
        data = json.dumps(manifest.to_document(), sort_keys=True, indent=1).encode()
        self.store.put_bytes(folder_key(tenant, manifest.draft.prefix) + CHECKPOINT_MANIFEST, data)

    def delete_folder(self, tenant: str, prefix: str) -> int:
        """Delete the folder, the service manifest first (so it stops looking complete)."""
        folder = folder_key(tenant, prefix)
        self.store.delete(folder + CHECKPOINT_MANIFEST)
        return self.store.delete_prefix(folder) + 1

    def read(self, tenant: str, manifest: Manifest, entry: FileEntry, offset: int,
             chunk_size: int) -> Iterator[bytes]:
        """Stream ``entry`` from ``offset``, verified against the manifest's sha256.

        The whole file is hashed even when resuming at ``offset`` > 0 (bytes before the offset are
        read but not yielded), so a resumed download is as well verified as a full one. Chunks
        are yielded one behind the reader: the final chunk only after the digest matched, so a
        corrupt file never arrives complete.
        """
        key = self._key(tenant, manifest.draft.prefix, entry.path)
        return _verified(key, manifest.checkpoint_id, entry, self._chunks(key, manifest, entry, chunk_size),
                         offset)

    def _chunks(self, key: str, manifest: Manifest, entry: FileEntry, chunk_size: int) -> Iterator[bytes]:
        try:
            yield from self.store.iter_chunks(key, chunk_size=chunk_size, verify=False)
        except NotFound as exc:
            raise IntegrityError(
                f"file {echo(entry.path)} of checkpoint {manifest.checkpoint_id} is listed in its manifest "
                "but missing from the object store: the checkpoint is damaged; use an earlier one",
                reason="DATA_MISSING",
            ) from exc

    def presign(self, tenant: str, manifest: Manifest, entry: FileEntry, expires: timedelta) -> str:
        """A presigned GET URL of one file."""
        return self.store.presigned_get_url(self._key(tenant, manifest.draft.prefix, entry.path), expires)


def _verified(key: str, checkpoint_id: str, entry: FileEntry, chunks: Iterator[bytes],
              offset: int) -> Iterator[bytes]:
    digest, position = hashlib.sha256(), 0
    held: bytes | None = None
    for chunk in chunks:
        digest.update(chunk)
        start, position = position, position + len(chunk)
        if position <= offset:
            continue  # before the resume point: hashed, not sent
        piece = chunk[max(0, offset - start):]
        if held is not None:
            yield held
        held = piece
    if (position, digest.hexdigest()) != (entry.size, entry.sha256):
        log.error("checksum mismatch reading %s", key)
        raise IntegrityError(
            f"file {echo(entry.path)} of checkpoint {checkpoint_id} is corrupt: read {position} bytes with "
            f"sha256 {digest.hexdigest()}, the manifest records {entry.size} bytes with sha256 "
            f"{entry.sha256}; use an earlier checkpoint or restore the file",
            reason="CHECKSUM_MISMATCH",
        )
    if held is not None:
        yield held
