"""Object-store adapters: evaluation reports, dataset versions (Parquet shards), model folders.

Key layout (all under the caller's tenant, checked by ``check_key``):

- reports: ``tenants/<tenant>/evaluations/<evaluation_id>/report.json``;
- dataset versions: an artifact (``MANIFEST.json`` + ``*.parquet`` shards in the datasets
  service's canonical record schema) at the prefix given by ``DatasetLocator``;
- base models named by object-store prefix: an artifact under ``tenants/<tenant>/`` holding a
  safetensors Hugging Face folder, downloaded (verified) to a local cache once.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tuneforge.common.errors import InvalidInput, NotFound
from tuneforge.common.storage import ObjectStore, check_key, tenant_prefix
from tuneforge.common.storage.artifacts import read_manifest

log = logging.getLogger(__name__)

DatasetLocator = Callable[[str, str], str]
"""(tenant, version_id) -> artifact prefix of the version in the object store."""

REJECTED_SHARD = "rejected.parquet"


class StoreReportStore:
    """Implements ``ReportStore`` with one JSON object per evaluation."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def put_report(self, tenant: str, evaluation_id: str, report: Mapping[str, Any]) -> tuple[str, str]:
        """Store the report; returns its key and URI."""
        key = check_key(f"{tenant_prefix(tenant)}evaluations/{evaluation_id}/report.json")
        self._store.put_bytes(key, json.dumps(report, ensure_ascii=False, default=str).encode())
        return key, f"{self._store.uri.rstrip('/')}/{key}"

    def get_report(self, tenant: str, key: str) -> dict[str, Any]:
        """Read a report of the tenant (keys of other tenants are refused as not found)."""
        if not key.startswith(tenant_prefix(tenant)):
            raise NotFound("report not found")
        return json.loads(self._store.get_bytes(check_key(key)))


def convention_locator(template: str) -> DatasetLocator:
    """A locator from a template with ``{tenant}`` and ``{version_id}`` (a setting)."""

    def locate(tenant: str, version_id: str) -> str:
        if not version_id.replace("_", "").replace("-", "").isalnum():
            raise InvalidInput.field_error("version_id", f"{version_id!r} is not a dataset version id")
        return template.format(tenant=tenant, version_id=version_id)

    return locate


class StoreDatasetReader:
    """Implements ``DatasetReader``: downloads a version's shards (verified) and filters a split."""

    def __init__(self, store: ObjectStore, locate: DatasetLocator, cache_dir: Path) -> None:
        self._store, self._locate, self._cache = store, locate, cache_dir

    def read(self, tenant: str, version_id: str, split: str, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` canonical records of ``split`` (all splits when empty)."""
        import pyarrow.parquet as pq

        prefix = self._locate(tenant, version_id)
        if not prefix.startswith(tenant_prefix(tenant)):
            raise NotFound(f"dataset version {version_id!r} not found")
        try:
            manifest = read_manifest(self._store, prefix)
        except NotFound:
            raise NotFound(f"dataset version {version_id!r} not found: check the id with ListDatasetVersions") from None
        shards = sorted(f.path for f in manifest.files if f.path.endswith(".parquet") and f.path != REJECTED_SHARD)
        out: list[dict[str, Any]] = []
        folder = self._cache / tenant / version_id
        for name in shards:
            local = folder / name
            if not local.exists():
                self._store.get_file(check_key(prefix.rstrip("/") + "/" + name), local)
            for row in pq.read_table(local).to_pylist():
                if not split or row.get("split") == split:
                    out.append(row)
                    if limit and len(out) >= limit:
                        return out
        if not out:
            raise InvalidInput.field_error(
                "datasets.split", f"dataset version {version_id!r} has no rows in split {split!r}: use a split it has"
            )
        return out


class StoreModelFetcher:
    """Downloads an artifact folder (base model or checkpoint) to a local cache, once."""

    def __init__(self, store: ObjectStore, cache_dir: Path) -> None:
        self._store, self._cache = store, cache_dir
        self._lock = threading.Lock()

    def fetch(self, prefix: str) -> Path:
        """Local folder with every file of the artifact at ``prefix`` (sha256-verified)."""
        manifest = read_manifest(self._store, prefix)
        folder = self._cache / prefix.strip("/")
        with self._lock:
            if (folder / ".complete").exists():
                return folder
            tmp = folder.with_name(folder.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            for f in manifest.files:
                check_key(f.path, field="manifest.files.path")
                self._store.get_file(check_key(prefix.rstrip("/") + "/" + f.path), tmp / f.path)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
            (folder / ".complete").touch()
        return folder
