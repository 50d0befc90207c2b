"""The training service's own files in the platform's store, and the operator's integration secrets.

``StoreJobFiles`` writes job files (the metrics file) whole: a single PUT on S3, a rename on a
``file://`` store, so a reader never sees half a file. ``DirIntegrationSecrets`` reads secrets laid
out as Kubernetes mounts them (``<dir>/<tenant>/<name>/<KEY>``, one file per key; the ``..data``
links of a Secret volume are followed, hidden entries skipped); values are never logged.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Mapping
from pathlib import Path

from tuneforge.common.errors import NotFound
from tuneforge.common.storage import ObjectStore, check_tenant
from tuneforge.engine.spec import IntegrationKind
from tuneforge.training import convert
from tuneforge.training.domain.integrations import PACKAGES
from tuneforge.training.domain.model import JobEvent

_KEY = re.compile(r"^[A-Z][A-Z0-9_]{0,127}$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class StoreJobFiles:
    """Implements ``JobFiles`` on the object store; metrics lines in the API's names (``convert``)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def metrics_line(self, event: JobEvent) -> str:
        """``{"sequence", "time", ...Metrics fields}`` as one JSON line (the CLI's ``jobs metrics`` shape)."""
        return json.dumps(convert.metrics_record(event)) + "\n"

    def write(self, key: str, data: bytes) -> None:
        """Replace the object whole."""
        self._store.put_bytes(key, data)

    def read(self, key: str) -> bytes | None:
        """The object, verified against its recorded sha256; None when absent."""
        return self._store.get_bytes(key) if self._store.exists(key) else None

    def upload_folder(self, prefix: str, folder: Path) -> int:
        """Put every file under ``folder`` at ``prefix`` + its relative path; returns how many."""
        count = 0
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self._store.put_file(prefix + path.relative_to(folder).as_posix(), path)
            count += 1
        return count


class DirIntegrationSecrets:
    """Implements ``IntegrationSecrets`` over a folder of mounted secrets (None: no secrets at all)."""

    def __init__(self, root: Path | None) -> None:
        self._root = root

    def _tenant_dir(self, tenant: str) -> Path | None:
        if self._root is None:
            return None
        check_tenant(tenant)
        return self._root / tenant

    def names(self, tenant: str) -> frozenset[str]:
        """The tenant's secret folders."""
        folder = self._tenant_dir(tenant)
        if folder is None or not folder.is_dir():
            return frozenset()
        return frozenset(p.name for p in folder.iterdir() if _NAME.match(p.name) and p.is_dir())

    def read(self, tenant: str, name: str) -> Mapping[str, str]:
        """The secret's keys (file names in upper case) and values (stripped of a trailing newline)."""
        if name not in self.names(tenant):
            raise NotFound(f"no integration secret named {name!r} is configured for this tenant (any more): ask "
                           "the operator to restore it, or create the job again without this integration")
        folder = self._tenant_dir(tenant)
        assert folder is not None
        return {p.name: p.read_text().rstrip("\n") for p in (folder / name).iterdir()
                if _KEY.match(p.name) and p.is_file()}

    def installed(self, kind: IntegrationKind) -> bool:
        """Whether the reporter's library is importable in this process (where reporters run)."""
        return importlib.util.find_spec(PACKAGES[kind]) is not None
