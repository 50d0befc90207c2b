"""Object-store adapters: evaluation reports; dataset versions and verified downloads.

Reports live at ``tenants/<tenant>/evaluations/<evaluation_id>/report.json`` (checked by
``check_key``). Reading dataset versions (Parquet shards) and verified downloads moved to
``tuneforge.common.peers.objects`` (shared with training) and are re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tuneforge.common.errors import NotFound
from tuneforge.common.peers.objects import (
    DATA_SHARDS,
    DEFAULT_SPLIT,
    StoreDatasetReader,
    VersionLookup,
    download_verified,
    key_in_store,
    pick_split,
)
from tuneforge.common.storage import ObjectStore, check_key, tenant_prefix

__all__ = ["DATA_SHARDS", "DEFAULT_SPLIT", "StoreDatasetReader", "StoreReportStore", "VersionLookup",
           "download_verified", "key_in_store", "pick_split"]


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
