"""The engine's narrow view of the shared object store (internal: may change).

Checkpoints are manifest-last artifacts of ``tuneforge.common.storage.artifacts``; this module
keeps those calls in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.common.storage import ObjectStore, open_object_store
from tuneforge.common.storage.artifacts import (
    MANIFEST_NAME,
    ArtifactWriter,
    read_manifest,
    verify_artifact,
)


def open_store(uri: str, options: dict[str, Any]) -> ObjectStore:
    """Open the checkpoint store (fails fast when it is unusable)."""
    return open_object_store(uri, field="output.checkpoint_uri", **options)


def child_dirs(store: ObjectStore, prefix: str) -> list[str]:
    """Names of the folders directly under ``prefix`` (committed artifacts or not)."""
    return [p[len(prefix) :].rstrip("/") for p in store.list_prefixes(prefix)]


def write(store: ObjectStore, local_dir: Path, prefix: str, extra: dict[str, Any]) -> None:
    """Upload ``local_dir`` as the artifact at ``prefix``, the manifest (sizes, sha256, ``extra``) last.

    Whatever an earlier, abandoned attempt left at ``prefix`` is removed first: a run only writes
    a step newer than the checkpoint it resumed from, so anything there is stale.
    """
    delete(store, prefix)
    writer = ArtifactWriter(store, prefix)
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        writer.add_file(path.relative_to(local_dir).as_posix(), path)
    writer.commit(extra)


def verify(store: ObjectStore, prefix: str) -> None:
    """Raise ``NotFound`` (no manifest: partial upload) or ``IntegrityError`` (damaged file)."""
    verify_artifact(store, prefix)


def download(store: ObjectStore, prefix: str, dest: Path) -> None:
    """Download every file of the artifact at ``prefix`` into ``dest`` (sha256-verified)."""
    base = prefix.rstrip("/") + "/"
    for entry in read_manifest(store, base).files:
        target = dest / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(base + entry.path, target, verify=True)


def delete(store: ObjectStore, prefix: str) -> None:
    """Delete an artifact, manifest first so that it never looks complete while half-deleted."""
    base = prefix.rstrip("/") + "/"
    store.delete(base + MANIFEST_NAME)
    store.delete_prefix(base)
