"""Upload a local checkpoint folder as one artifact (manifest last); shared by the training
workers (engine) and the checkpoints service.

``CheckpointWriter(store).write(local_dir, prefix, extra)`` is idempotent:

- the same files and extra fields already committed at ``prefix`` -> no-op, returns that manifest;
- different content already committed there -> ``AlreadyExists`` (checkpoints are immutable);
- files left by an interrupted earlier attempt that match the local ones are adopted, not re-sent.

Each step (read the existing manifest, upload one file, commit) is retried on ``Unavailable``
with backoff, on top of the store's own connection retries, so a store outage of a few seconds
does not lose a checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from tuneforge.common import tracing
from tuneforge.common.errors import Aborted, AlreadyExists, InvalidInput, NotFound, Unavailable
from tuneforge.common.public_text import echo
from tuneforge.common.storage.artifacts import (
    ArtifactWriter,
    Manifest,
    ManifestFile,
    artifact_prefix,
    read_manifest,
)
from tuneforge.common.storage.base import ObjectStore

log = logging.getLogger(__name__)

T = TypeVar("T")

_HASH_CHUNK = 1 << 20


class CheckpointWriter:
    """Writes checkpoint folders to ``store``.

    Args:
        store: the object store.
        retries: extra attempts per file when the store stays ``Unavailable``.
        backoff_s: first delay between attempts; doubles each time.
    """

    def __init__(self, store: ObjectStore, *, retries: int = 3, backoff_s: float = 1.0) -> None:
        self.store = store
        self.retries = retries
        self.backoff_s = backoff_s

    def write(
        self, local_dir: Path, prefix: str, manifest_extra: Mapping[str, Any] | None = None
    ) -> Manifest:
        """Upload every file of ``local_dir`` under ``prefix`` and commit the manifest last.

        Args:
            local_dir: the checkpoint folder (regular files only, any depth).
            prefix: artifact prefix, e.g. ``tenants/acme/runs/r1/checkpoints/step-100/``.
            manifest_extra: JSON-serializable fields for the manifest (step, metrics, config...).

        Returns:
            The committed manifest (the existing one when this was a no-op).

        Raises:
            InvalidInput: ``local_dir`` is missing, empty, or holds symlinks or special files.
            AlreadyExists: a different checkpoint is already committed at ``prefix``.
            Aborted: a local file changed while it was being uploaded.
            Unavailable: the store stayed unreachable through every retry.
        """
        with tracing.span("checkpoint.write", {"tuneforge.checkpoint.prefix": prefix}) as current:
            manifest = self._write(local_dir, artifact_prefix(prefix), manifest_extra)
            current.set_attribute("tuneforge.checkpoint.bytes", manifest.total_size)
            return manifest

    def _write(self, local_dir: Path, prefix: str, manifest_extra: Mapping[str, Any] | None) -> Manifest:
        local = _scan(local_dir)
        existing = self._retrying(f"reading the manifest of {prefix}", lambda: self._existing(prefix))
        if existing is not None:
            wanted = tuple(_describe(name, local[name].path) for name in sorted(local))
            return self._same_or_conflict(prefix, existing, wanted, manifest_extra)
        writer = self._retrying(f"opening {prefix}", lambda: ArtifactWriter(self.store, prefix))
        for name in sorted(local):
            self._retrying(f"uploading {name}", partial(self._upload, writer, name, local[name]))
        manifest = self._retrying(f"committing {prefix}", lambda: writer.commit(manifest_extra))
        log.info("checkpoint %s committed: %d files, %d bytes", prefix, len(local), manifest.total_size)
        return manifest

    def _existing(self, prefix: str) -> Manifest | None:
        try:
            return read_manifest(self.store, prefix)
        except NotFound:
            return None

    def _same_or_conflict(
        self,
        prefix: str,
        existing: Manifest,
        wanted: tuple[ManifestFile, ...],
        extra: Mapping[str, Any] | None,
    ) -> Manifest:
        candidate = Manifest(files=wanted, created_at=existing.created_at, extra=dict(extra or {}))
        if existing.same_content(candidate):
            log.info("checkpoint %s already committed with the same content: nothing to do", prefix)
            return existing
        differing = sorted({f.path for f in set(existing.files) ^ set(wanted)})
        what = f"files differ: {differing[:5]}" if differing else "manifest fields differ"
        raise AlreadyExists(
            f"a different checkpoint is already committed at {echo(prefix)} ({what}): checkpoints are "
            "immutable; write to a new prefix (e.g. a new step number)"
        )

    def _upload(self, writer: ArtifactWriter, name: str, local: _LocalFile) -> None:
        # The file is hashed once, by the store while streaming it; it is hashed locally only when
        # an interrupted attempt left an object of the same size to compare against (then it is
        # adopted instead of re-sent).
        key = writer.prefix + name
        try:
            stored = self.store.stat(key)
        except NotFound:
            stored = None
        if (stored is not None and stored.size == local.size
                and stored.sha256 == _describe(name, local.path).sha256):
            writer.adopt(name)
            return
        info = self.store.put_file(key, local.path)
        if info.size != local.size or _fingerprint(local.path) != local.fingerprint:
            raise Aborted(
                f"checkpoint file {echo(name)} changed while it was uploaded (size/mtime before "
                f"{local.fingerprint}, after {_fingerprint(local.path)}): write checkpoints only after "
                "the folder is complete"
            )
        writer.adopt(name)

    def _retrying(self, what: str, step: Callable[[], T]) -> T:
        """Run one idempotent step, retrying it while the store is ``Unavailable``."""
        for attempt in range(self.retries):
            try:
                return step()
            except Unavailable as exc:
                delay = self.backoff_s * 2**attempt
                log.warning(
                    "checkpoint writer: %s failed (%s); retry %d in %.1fs", what, exc, attempt + 1, delay
                )
                time.sleep(delay)
        return step()


@dataclass(frozen=True)
class _LocalFile:
    path: Path
    size: int
    fingerprint: tuple[int, int]


def _fingerprint(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns)


def _scan(local_dir: Path) -> dict[str, _LocalFile]:
    """Map each file's relative posix path to its path, size and (size, mtime) fingerprint."""
    if not local_dir.is_dir():
        raise InvalidInput.field_error("local_dir", f"{echo(str(local_dir))} is not a folder")
    found: dict[str, _LocalFile] = {}
    for path in sorted(local_dir.rglob("*")):
        name = path.relative_to(local_dir).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise InvalidInput.field_error(
                "local_dir",
                f"{echo(name)} in {echo(str(local_dir))} is a symlink or special file: copy the real file in",
            )
        if path.is_file():
            fp = _fingerprint(path)
            found[name] = _LocalFile(path, fp[0], fp)
    if not found:
        raise InvalidInput.field_error("local_dir", f"{echo(str(local_dir))} holds no files: nothing to upload")
    return found


def _describe(name: str, path: Path) -> ManifestFile:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return ManifestFile(path=name, size=size, sha256=digest.hexdigest())
