"""The engine's narrow view of the shared object store (internal: may change).

Checkpoints are manifest-last artifacts of ``tuneforge.common.storage.artifacts``; this module
keeps those calls in one place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tuneforge.common.storage import ObjectStore, open_object_store
from tuneforge.common.storage.artifacts import MANIFEST_NAME, read_manifest, verify_artifact
from tuneforge.common.storage.checkpoint_writer import CheckpointWriter


def _env_secret(name: str) -> str | None:
    """``TUNEFORGE_<NAME>`` or the content of the file ``TUNEFORGE_<NAME>_FILE`` (Kubernetes secrets)."""
    path = os.environ.get(f"TUNEFORGE_{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(f"TUNEFORGE_{name}") or None


def open_store(uri: str, options: dict[str, Any], *, field: str = "output.checkpoint_uri") -> ObjectStore:
    """Open the shared store (checkpoints, dataset versions; fails fast when it is unusable).

    S3 credentials never live in the spec (it is saved beside every checkpoint): they come from
    ``options`` or from the worker's environment, ``TUNEFORGE_S3_ACCESS_KEY``/``_SECRET_KEY``
    (or their ``_FILE`` forms), the same settings the services read.
    """
    if uri.startswith("s3://"):
        options = {"access_key": _env_secret("S3_ACCESS_KEY"), "secret_key": _env_secret("S3_SECRET_KEY"),
                   **options}
    return open_object_store(uri, field=field, **options)


def child_dirs(store: ObjectStore, prefix: str) -> list[str]:
    """Names of the folders directly under ``prefix`` (committed artifacts or not)."""
    return [p[len(prefix) :].rstrip("/") for p in store.list_prefixes(prefix)]


def write(store: ObjectStore, local_dir: Path, prefix: str, extra: dict[str, Any]) -> None:
    """Upload ``local_dir`` as the artifact at ``prefix``, the manifest (sizes, sha256, ``extra``) last.

    Whatever an earlier, abandoned attempt left at ``prefix`` is removed first: a run only writes
    a step newer than the checkpoint it resumed from, so anything there is stale.
    """
    delete(store, prefix)
    # The shared writer (also used by the checkpoint service): streamed multipart uploads, each
    # file and the commit retried while the store is unavailable, manifest last.
    CheckpointWriter(store).write(local_dir, prefix, extra)


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
