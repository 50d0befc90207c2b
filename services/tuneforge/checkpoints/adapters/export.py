"""``Exporter``: download a checkpoint (verified), run ``tuneforge.engine.export``, upload the folder.

Base models for merged exports are looked up by the name in ``lineage.base_model``:

1. ``tenants/<tenant>/models/<name>/`` in the object store (a committed artifact, MANIFEST.json);
2. ``<models_dir>/<name>`` on the service's disk (models baked into the image or a volume).

Exports land in ``tenants/<tenant>/exports/<destination>/``, written manifest-last by the shared
``CheckpointWriter`` (its MANIFEST.json lists every exported file with size and sha256).

Where the export runs: in this process (the embedded default), or, with
``TUNEFORGE_EXPORT_RAY_ADDRESS``, as a Ray task (``RayExportRunner``). The task gets the checkpoint
and the base model by store reference (``StoredFolder``: keys, sizes, sha256), fetches and checks
them on its node, exports, and writes the export back to the store itself, manifest last (a
reader sees the whole export or none); the service only records the result.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from tuneforge.checkpoints.adapters.objects import StoreCheckpointFiles, folder_key
from tuneforge.checkpoints.domain.model import ExportFormat, FileEntry, Manifest
from tuneforge.checkpoints.domain.ports import ExportResult
from tuneforge.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    TuneforgeError,
)
from tuneforge.common.public_text import echo
from tuneforge.common.ray_connection import connect, lost
from tuneforge.common.storage import ObjectStore, check_key, tenant_prefix
from tuneforge.common.storage.artifacts import read_manifest
from tuneforge.common.storage.checkpoint_writer import CheckpointWriter
from tuneforge.common.storage.refs import StoredFile, StoredFolder
from tuneforge.common.storage.refs import fetch_folder as fetch_stored_folder
from tuneforge.common.workdirs import WorkFolders

log = logging.getLogger(__name__)

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127})?")


class StoreExporter:
    """Exports checkpoints of ``store`` back into ``store``.

    Args:
        store: the object store.
        models_dir: local folder of base models (may not exist).
        work_dir: scratch space for downloads and exports (a temp folder per export).
    """

    def __init__(self, store: ObjectStore, models_dir: Path, work_dir: Path,
                 ray: RayExportRunner | None = None) -> None:
        self._store = store
        self._files = StoreCheckpointFiles(store)
        self._models_dir = models_dir
        self._ray = ray
        self.folders = WorkFolders(work_dir, ("export-",))  # a crash's leftovers are swept

    def export(self, tenant: str, manifest: Manifest, fmt: ExportFormat, destination: str) -> ExportResult:
        """Export ``manifest`` as ``fmt`` to ``tenants/<tenant>/exports/<destination>/``.

        Idempotent: when the destination already holds an export of the same checkpoint in the
        same format, that export is returned (nothing is re-run).

        Raises:
            AlreadyExists: the destination holds another export (other checkpoint or format).
        """
        prefix = check_key(f"{tenant_prefix(tenant)}exports/{destination.strip('/')}", field="destination") + "/"
        if (earlier := self._earlier_export(manifest, fmt, destination, prefix)) is not None:
            return earlier
        if self._ray is not None:
            return self._export_on_ray(tenant, manifest, fmt, prefix)
        with self.folders.folder("export-") as tmp:
            ckpt_dir, out_dir = tmp / "checkpoint", tmp / "out"
            self._download(tenant, manifest, ckpt_dir)
            self._run(tenant, manifest, fmt, ckpt_dir, out_dir, Path(tmp) / "base")
            extra = {"checkpoint_id": manifest.checkpoint_id, "format": fmt.value, "step": manifest.step,
                     "base_model": manifest.draft.lineage.base_model, "head": manifest.head.value}
            written = CheckpointWriter(self._store).write(out_dir, prefix, extra)
        log.info("exported %s as %s to %s", manifest.checkpoint_id, fmt.value, prefix)
        files = tuple(FileEntry(f.path, f.size, f.sha256) for f in written.files)
        return ExportResult(uri=_join_uri(self._store.uri, prefix), files=files)

    def _export_on_ray(self, tenant: str, manifest: Manifest, fmt: ExportFormat, prefix: str) -> ExportResult:
        assert self._ray is not None
        checkpoint = StoredFolder(self._store.uri, folder_key(tenant, manifest.draft.prefix),
                                  tuple(StoredFile(f.path, f.size, f.sha256) for f in manifest.draft.files))
        base = None
        if fmt is ExportFormat.MERGED:
            base = self._base_source(tenant, manifest.draft.lineage.base_model)
        extra = {"checkpoint_id": manifest.checkpoint_id, "format": fmt.value, "step": manifest.step,
                 "base_model": manifest.draft.lineage.base_model, "head": manifest.head.value}
        written = self._ray.run(fmt.value, checkpoint, base, prefix, extra, manifest.checkpoint_id)
        log.info("exported %s as %s to %s on Ray", manifest.checkpoint_id, fmt.value, prefix)
        files = tuple(FileEntry(path, size, sha) for path, size, sha in written)
        return ExportResult(uri=_join_uri(self._store.uri, prefix), files=files)

    def _base_source(self, tenant: str, name: str) -> StoredFolder:
        """The base model by store reference: Ray workers cannot read this service's models folder."""
        if not _MODEL_NAME.fullmatch(name) or ".." in name:
            raise InvalidInput.field_error(
                "lineage.base_model", f"{echo(name)} is not a model name such as 'smollm2-135m' or 'org/model'")
        prefix = f"{tenant_prefix(tenant)}models/{name}/"
        try:
            artifact = read_manifest(self._store, prefix)
        except NotFound:
            raise FailedPrecondition(
                f"base model {echo(name)} is not in the object store at {prefix}, and exports run on the Ray "
                "cluster (TUNEFORGE_EXPORT_RAY_ADDRESS), whose workers read models from the store only: register "
                "it with python -m tuneforge.engine.models import") from None
        return StoredFolder(self._store.uri, prefix, tuple(StoredFile(f.path, f.size, f.sha256) for f in artifact.files))

    def _earlier_export(self, manifest: Manifest, fmt: ExportFormat, destination: str,
                        prefix: str) -> ExportResult | None:
        """The committed export at ``prefix`` if it is this one; ``AlreadyExists`` if it is another."""
        try:
            earlier = read_manifest(self._store, prefix)
        except NotFound:
            return None
        was = (earlier.extra.get("checkpoint_id"), earlier.extra.get("format"))
        if was != (manifest.checkpoint_id, fmt.value):
            raise AlreadyExists(
                f"destination {echo(destination)} already holds an export of checkpoint {was[0]} as {was[1]}: "
                "exports are immutable; choose another destination, or leave it empty for "
                "<checkpoint_id>/<format>")
        log.info("%s was exported as %s to %s before: returning that export", manifest.checkpoint_id,
                 fmt.value, prefix)
        files = tuple(FileEntry(f.path, f.size, f.sha256) for f in earlier.files)
        return ExportResult(uri=_join_uri(self._store.uri, prefix), files=files)

    def _run(self, tenant: str, manifest: Manifest, fmt: ExportFormat, ckpt_dir: Path, out_dir: Path,
             base_tmp: Path) -> None:
        base_dir = None
        if fmt is ExportFormat.MERGED:
            base_dir = self._base_model(tenant, manifest.draft.lineage.base_model, base_tmp)
        _engine_export(fmt.value, ckpt_dir, base_dir, out_dir, manifest.checkpoint_id)

    def _download(self, tenant: str, manifest: Manifest, dest: Path) -> None:
        for entry in manifest.draft.files:
            path = dest / entry.path
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as out:
                for chunk in self._files.read(tenant, manifest, entry, 0, 1 << 20):
                    out.write(chunk)

    def _base_model(self, tenant: str, name: str, tmp: Path) -> Path:
        if not _MODEL_NAME.fullmatch(name) or ".." in name:
            raise InvalidInput.field_error(
                "lineage.base_model", f"{echo(name)} is not a model name such as 'smollm2-135m' or 'org/model'")
        prefix = f"{tenant_prefix(tenant)}models/{name}/"
        try:
            artifact = read_manifest(self._store, prefix)
        except NotFound:
            local = self._models_dir / name
            if (local / "config.json").is_file():
                return local
            raise FailedPrecondition(
                f"base model {echo(name)} is neither in the object store at {prefix} nor in the models folder "
                f"{self._models_dir}: upload it there (safetensors folder) before exporting") from None
        for entry in artifact.files:
            self._store.get_file(prefix + entry.path, tmp / entry.path)
        return tmp


def _engine_export(fmt: str, ckpt_dir: Path, base_dir: Path | None, out_dir: Path, checkpoint_id: str) -> None:
    """Run the engine's export of ``fmt`` (here or inside a Ray task)."""
    from tuneforge.engine import export as engine_export  # torch: loaded on first export only

    try:
        if fmt == ExportFormat.ADAPTER.value:
            engine_export.export_adapter(ckpt_dir, out_dir)
        elif fmt == ExportFormat.FULL.value:
            engine_export.export_full(ckpt_dir, out_dir)
        else:
            assert base_dir is not None
            engine_export.export_merged(base_dir, ckpt_dir, out_dir)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        # What the checkpoint holds cannot be loaded as that model (missing config, shapes
        # that do not fit...): the caller's checkpoint, not the service, is at fault.
        log.warning("export of %s as %s failed", checkpoint_id, fmt, exc_info=True)
        raise FailedPrecondition(
            f"checkpoint {checkpoint_id} cannot be loaded for a {fmt} export "
            f"({type(exc).__name__}): it must hold a complete safetensors model folder "
            "(config.json and weights) of the right kind") from None


def _ray_export(fmt: str, checkpoint: StoredFolder, base: StoredFolder | None, prefix: str,
                extra: dict[str, Any], checkpoint_id: str) -> list[tuple[str, int, str]]:
    """Inside the Ray worker: fetch by reference, export, write the export to the store manifest-last."""
    from tuneforge.engine.models.registry import fetch_folder
    from tuneforge.engine.train._artifacts import open_store

    store = open_store(checkpoint.store_uri, {}, field="export.store_uri")
    base_dir = fetch_folder(base, "lineage.base_model") if base is not None else None  # cached: immutable
    with tempfile.TemporaryDirectory(prefix="tuneforge-export-") as tmp:
        # The checkpoint (optimizer state included) only for this export: not kept in the cache.
        ckpt_dir = fetch_stored_folder(store, checkpoint, Path(tmp) / "checkpoint")
        out_dir = Path(tmp) / "out"
        _engine_export(fmt, ckpt_dir, base_dir, out_dir, checkpoint_id)
        written = CheckpointWriter(store).write(out_dir, prefix, extra)
    return [(f.path, f.size, f.sha256) for f in written.files]


class RayExportRunner:
    """Runs exports as Ray tasks on the cluster at ``address`` ('' starts a local Ray)."""

    def __init__(self, address: str, *, num_cpus: float = 1, num_gpus: float = 0) -> None:
        self._address, self._cpus, self._gpus = address, num_cpus, num_gpus

    def _connect(self) -> Any:
        return connect(self._address, "TUNEFORGE_EXPORT_RAY_ADDRESS")

    def run(self, fmt: str, checkpoint: StoredFolder, base: StoredFolder | None, prefix: str,
            extra: dict[str, Any], checkpoint_id: str) -> list[tuple[str, int, str]]:
        """The exported files (path, size, sha256), once the task has committed them to the store."""
        ray = self._connect()
        task = ray.remote(num_cpus=self._cpus, num_gpus=self._gpus, max_retries=0)(_ray_export)
        try:
            return list(ray.get(task.remote(fmt, checkpoint, base, prefix, extra, checkpoint_id)))
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, TuneforgeError):
                raise exc.cause from None  # the taxonomy's errors pickle across Ray
            raise
        except ConnectionError as exc:  # the connection broke mid-export: the next export connects anew
            raise lost(self._address, exc, "TUNEFORGE_EXPORT_RAY_ADDRESS", during="during the export") from exc


def _join_uri(store_uri: str, key: str) -> str:
    base, sep, query = store_uri.partition("?")
    return f"{base.rstrip('/')}/{key}{sep}{query}"
