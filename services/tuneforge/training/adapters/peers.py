"""The training service's view of its peers, built on ``tuneforge.common.peers``.

- ``PeerDatasets``: leases through the dataset service; rows read straight from the shared store
  (the version's Parquet shards, verified) and written as the engine's JSONL input;
- ``PeerModels``: base models by name (store, then ``TUNEFORGE_MODELS_DIR``) or full-weight
  checkpoints by id;
- ``RegisteringPublisher``: reads the engine's manifest of a committed checkpoint and registers it
  with the checkpoint service (sizes and sha256 as written, lineage: job, dataset version, base model).

A job re-queued after a restart acts as its tenant through ``common.peers.credentials``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tuneforge.common.auth import Identity
from tuneforge.common.errors import InvalidInput, NotFound, TuneforgeError
from tuneforge.common.peers.clients import (
    CheckpointDraft,
    CheckpointFile,
    GrpcCheckpoints,
    GrpcDatasetVersions,
)
from tuneforge.common.peers.models import StoreModelResolver
from tuneforge.common.peers.objects import StoreDatasetReader, key_in_store
from tuneforge.common.storage import ObjectStore, tenant_prefix
from tuneforge.common.storage.artifacts import read_manifest
from tuneforge.engine.spec import MethodKind
from tuneforge.training.domain.model import Job, JobCheckpoint
from tuneforge.training.domain.ports import VersionFacts

FIELD = "base_model"


class PeerDatasets:
    """Implements ``DatasetAccess``."""

    def __init__(self, versions: GrpcDatasetVersions, reader: StoreDatasetReader) -> None:
        self._versions, self._reader = versions, reader

    def acquire_lease(self, caller: Identity, version_id: str, holder: str) -> VersionFacts:
        """Lease the version (idempotent); its kind and split sizes come back with it."""
        info = self._versions.acquire_lease(caller, version_id, holder)
        return VersionFacts(info.version_id, info.kind, dict(info.split_counts))

    def release_lease(self, caller: Identity, version_id: str, holder: str) -> None:
        """Release the lease (a version deleted meanwhile is not an error)."""
        try:
            self._versions.release_lease(caller, version_id, holder)
        except NotFound:
            return

    def write_split(self, caller: Identity, version_id: str, split: str, dest: Path) -> int:
        """Canonical rows of ``split`` ('' = every row) as JSONL at ``dest``; returns the row count."""
        rows = self._reader.read(caller, version_id, split, 0)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with dest.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        return len(rows)


@dataclass(frozen=True)
class _Ref:
    base_model: str = ""
    checkpoint_id: str = ""


class PeerModels:
    """Implements ``ModelLocator`` with the shared resolver."""

    def __init__(self, resolver: StoreModelResolver) -> None:
        self._resolver = resolver

    def locate(self, caller: Identity, base_model: str) -> Path:
        """A registered base model's folder, or a full-weight checkpoint's model folder."""
        if "://" in base_model:
            raise InvalidInput.field_error(FIELD, "model URIs are not accepted: register the model (a safetensors "
                                                  "folder) under tenants/<tenant>/models/<name>/ and pass its name")
        if not base_model.startswith("ckpt_"):
            return self._resolver.resolve(caller, _Ref(base_model=base_model)).model_dir
        resolved = self._resolver.resolve(caller, _Ref(checkpoint_id=base_model))
        if resolved.adapter_dir is not None:
            raise InvalidInput.field_error(FIELD, f"checkpoint {base_model} is an adapter: export it merged "
                                                  "(ExportCheckpoint, EXPORT_FORMAT_MERGED) and train on the export")
        return resolved.model_dir


_KIND = {MethodKind.FULL: "FULL", MethodKind.LORA: "LORA", MethodKind.QLORA: "LORA", MethodKind.PREFIX: "PREFIX",
         MethodKind.PROMPT: "PREFIX"}


class RegisteringPublisher:
    """Implements ``CheckpointPublisher``."""

    def __init__(self, store: ObjectStore, checkpoints: GrpcCheckpoints) -> None:
        self._store, self._checkpoints = store, checkpoints

    def publish(self, caller: Identity, job: Job, uri: str, step: int, metrics: Mapping[str, float],
                dataset_version_id: str) -> JobCheckpoint:
        """Register the committed checkpoint at ``uri`` (idempotent for the same job, step and files)."""
        folder = key_in_store(self._store, uri, f"checkpoint of job {job.id}").rstrip("/") + "/"
        root = f"{tenant_prefix(job.tenant)}checkpoints/"
        if not folder.startswith(root):
            raise NotFound(f"checkpoint {uri} is outside the tenant's checkpoint area {root}")
        manifest = read_manifest(self._store, folder)
        extra_metrics = manifest.extra.get("metrics") if isinstance(manifest.extra.get("metrics"), dict) else {}
        values = {k: float(v) for k, v in {**extra_metrics, **metrics}.items()
                  if isinstance(v, int | float) and math.isfinite(float(v))}
        draft = CheckpointDraft(
            job_id=job.id, step=int(manifest.extra.get("step", step)), kind=_KIND.get(job.spec.method.kind, "LORA"),
            prefix=folder.removeprefix(root).rstrip("/"),
            files=tuple(CheckpointFile(f.path, f.size, f.sha256) for f in manifest.files),
            metrics=values, config=self._spec(folder), dataset_version_id=dataset_version_id,
            base_model=job.spec.model.name or "")
        registered = self._checkpoints.register(caller, draft)
        return JobCheckpoint(registered.checkpoint_id, registered.step, dict(registered.metrics),
                             registered.create_time or datetime.now(UTC), uri)

    def _spec(self, folder: str) -> dict[str, object]:
        """The resolved engine spec saved beside the checkpoint (``spec.json``), or {}."""
        try:
            doc = json.loads(self._store.get_bytes(folder + "spec.json"))
        except (TuneforgeError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}
