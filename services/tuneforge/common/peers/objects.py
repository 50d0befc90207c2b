"""Object-store reads shared by the services that consume other services' artifacts.

- dataset versions: wherever the datasets service put them
  (``tenants/<tenant>/datasets/<dataset_id>/versions/<version_id>/``): a version is resolved
  through ``GetDatasetVersion`` (on the caller's behalf), whose ``uri`` names its ``MANIFEST.json``
  in the object store every service shares; shards are downloaded once, each checked against the
  manifest's size and sha256;
- verified downloads of any manifest-listed file (``download_verified``) and the mapping of a peer's
  URI to a key of this service's store (``key_in_store``).

Used by the evaluation service (test splits) and the training service (train/validation splits).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from tuneforge.common.auth import Identity
from tuneforge.common.errors import FailedPrecondition, IntegrityError, InvalidInput, NotFound
from tuneforge.common.peers.clients import VersionInfo
from tuneforge.common.public_text import echo
from tuneforge.common.storage import ObjectStore, check_key, tenant_prefix
from tuneforge.common.storage.artifacts import MANIFEST_NAME, read_manifest

log = logging.getLogger(__name__)

DATA_SHARDS = "data/"
"""Folder of a version's Parquet shards (``rejected.parquet`` beside it is not data)."""
DEFAULT_SPLIT = "test"


def key_in_store(store: ObjectStore, uri: str, what: str) -> str:
    """The key of ``uri`` in ``store``, or ``FailedPrecondition`` when it lives in another store.

    URIs are compared without their query (endpoint options), so services that reach the same
    bucket through different endpoints agree.
    """
    base = store.uri.split("?", 1)[0].rstrip("/") + "/"
    path = uri.split("?", 1)[0]
    if not path.startswith(base):
        raise FailedPrecondition(
            f"{what} is stored at {path}, outside this service's object store {base}: give every service "
            "the same TUNEFORGE_OBJECT_STORE_URI")
    return path[len(base):]


def download_verified(store: ObjectStore, key: str, dest: Path, size: int, sha256: str) -> Path:
    """Download ``key`` to ``dest`` once; the stored copy must match the manifest's size and sha256.

    The store verifies the bytes against the sha256 it recorded at upload; comparing that record
    with the manifest's catches a file replaced after the manifest was committed.
    """
    if dest.is_file() and dest.stat().st_size == size:
        return dest  # downloaded and verified earlier; artifacts are immutable
    info = store.get_file(check_key(key), dest)
    if (info.size, info.sha256) != (size, sha256):
        dest.unlink(missing_ok=True)
        raise IntegrityError(
            f"{key} is {info.size} bytes with sha256 {info.sha256}, but its manifest records {size} bytes "
            f"with sha256 {sha256}: the stored copy was replaced or is corrupt; rewrite the artifact",
            reason="CHECKSUM_MISMATCH")
    return dest


class VersionLookup(Protocol):
    """Resolves a dataset version id for a caller (the datasets service's ``GetDatasetVersion``)."""

    def get(self, caller: Identity, version_id: str) -> VersionInfo:
        """Manifest URI and split sizes; ``NotFound`` for unknown ids and other tenants' versions."""
        ...


def pick_split(info: VersionInfo, split: str) -> str | None:
    """The split to read: ``None`` means every row.

    An empty ``split`` means the ``test`` split of a split version, or every row of a version
    that was never split (an evaluation set uploaded on its own).

    Raises:
        InvalidInput: the version has no rows in the requested split (names the splits it has).
    """
    counts = {k: v for k, v in info.split_counts.items() if v > 0}
    if not split:
        return DEFAULT_SPLIT if counts else None
    if split in counts:
        return split
    if not counts:
        raise InvalidInput.field_error(
            "datasets.split", f"dataset version {echo(info.version_id)} is not split: curate it with a split "
            "(CurateDataset split=...) or leave split empty to evaluate every row")
    raise InvalidInput.field_error(
        "datasets.split", f"dataset version {echo(info.version_id)} has no rows in split {echo(split)}: use one of "
        f"{sorted(counts)}")


class StoreDatasetReader:
    """Implements ``DatasetReader``: resolves the version, downloads its shards (verified), filters a split."""

    def __init__(self, store: ObjectStore, versions: VersionLookup, cache_dir: Path) -> None:
        self._store, self._versions, self._cache = store, versions, cache_dir

    def check(self, caller: Identity, version_id: str, split: str) -> None:
        """Fail now, not in the background run, on an unknown/foreign version or a missing split."""
        pick_split(self._versions.get(caller, version_id), split)

    def read(self, caller: Identity, version_id: str, split: str, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` canonical records of ``split`` (see ``pick_split``), in shard order."""
        info = self._versions.get(caller, version_id)
        wanted = pick_split(info, split)
        prefix = self._prefix(caller.tenant, info)
        out: list[dict[str, Any]] = []
        for batch in self._batches(caller.tenant, version_id, prefix):
            if wanted is not None:
                batch = batch.filter(_equals(batch, "split", wanted))
            out.extend(batch.to_pylist())
            if limit and len(out) >= limit:
                return out[:limit]
        return out

    def _prefix(self, tenant: str, info: VersionInfo) -> str:
        key = key_in_store(self._store, info.manifest_uri, f"dataset version {echo(info.version_id)}")
        prefix = key.removesuffix(MANIFEST_NAME)
        if prefix == key or not prefix.startswith(tenant_prefix(tenant)):
            # The datasets service scoped the lookup by tenant; this guards a misconfigured peer.
            raise NotFound(f"dataset version {echo(info.version_id)} not found: check the id with ListDatasetVersions")
        return prefix

    def _batches(self, tenant: str, version_id: str, prefix: str) -> Iterator[Any]:
        import pyarrow.parquet as pq

        manifest = read_manifest(self._store, prefix)
        shards = sorted((f for f in manifest.files if f.path.startswith(DATA_SHARDS) and f.path.endswith(".parquet")),
                        key=lambda f: f.path)
        folder = self._cache / tenant / version_id
        for f in shards:  # shard by shard: a capped evaluation downloads only what it reads
            local = download_verified(self._store, prefix + f.path, folder / f.path, f.size, f.sha256)
            yield from pq.ParquetFile(local).iter_batches(batch_size=1024)


def _equals(batch: Any, column: str, value: str) -> Any:
    import pyarrow.compute as pc

    return pc.fill_null(pc.equal(batch.column(column), value), False)
