"""Version files in the object store: Parquet shards + rejected-rows report, manifest last.

Layout: ``tenants/<tenant>/datasets/<dataset_id>/versions/<version_id>/`` holding
``data/part-00000.parquet`` ..., ``rejected.parquet`` (if any) and ``MANIFEST.json`` (written
last by ``ArtifactWriter``: a version without a manifest is invisible and is garbage).
Reads download to a local cache keyed by version id (versions are immutable) and verify sha256.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tuneforge.common.storage import ObjectStore, tenant_prefix
from tuneforge.common.storage.artifacts import ArtifactWriter, read_manifest

MANIFEST_NAME = "MANIFEST.json"


class StoreVersionFiles:
    """Publishes staged versions and fetches them back (local cache under ``cache_dir``)."""

    def __init__(self, store: ObjectStore, cache_dir: Path) -> None:
        self.store = store
        self.cache_dir = cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True)

    def prefix(self, tenant: str, dataset_id: str, version_id: str) -> str:
        """The version's key prefix (ends with '/')."""
        return f"{tenant_prefix(tenant)}datasets/{dataset_id}/versions/{version_id}/"

    def uri(self, prefix: str) -> str:
        """URI of the version's manifest."""
        base = self.store.uri.split("?", 1)[0].rstrip("/")  # endpoint options are not part of the name
        return f"{base}/{prefix}{MANIFEST_NAME}"

    def publish(self, prefix: str, files: list[Path], rejected: Path | None, extra: dict[str, Any]) -> None:
        """Upload shards and report, then the manifest; on failure remove what was uploaded."""
        writer = ArtifactWriter(self.store, prefix)
        try:
            for path in files:
                writer.add_file(f"data/{path.name}", path)
            if rejected is not None:
                writer.add_file("rejected.parquet", rejected)
            writer.commit(extra)
        except BaseException:
            self.store.delete_prefix(prefix)
            raise

    def fetch(self, prefix: str, version_id: str) -> tuple[list[Path], Path | None]:
        """Local paths of the version's shards and rejected report (downloaded once, verified)."""
        folder = self.cache_dir / version_id
        done = folder / ".complete"
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            manifest = read_manifest(self.store, prefix)
            for entry in manifest.files:
                dest = folder / entry.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.store.get_file(prefix + entry.path, dest)
            done.touch()
        shards = sorted((folder / "data").glob("part-*.parquet"))
        rejected = folder / "rejected.parquet"
        return shards, rejected if rejected.exists() else None

    def delete(self, prefix: str, version_id: str) -> None:
        """Remove the manifest first (the version becomes invisible), then the rest."""
        self.store.delete(prefix + MANIFEST_NAME)
        self.store.delete_prefix(prefix)
        shutil.rmtree(self.cache_dir / version_id, ignore_errors=True)

    def open_source(self, key: str, dest: Path) -> Path:
        """Download a registered source object to ``dest`` (verified)."""
        self.store.get_file(key, dest)
        return dest
