"""The training service's view of its peers, built on ``tuneforge.common.peers``.

- ``PeerDatasets``: leases through the dataset service; each version's manifest in the shared store,
  pinned by its sha256, for the workers to read the Parquet shards themselves;
- ``PeerModels``: base models by name (store, then ``TUNEFORGE_MODELS_DIR``) or full-weight
  checkpoints by id;
- ``RegisteringPublisher``: reads the engine's manifest of a committed checkpoint and registers it
  with the checkpoint service (sizes and sha256 as written, lineage: job, dataset version, base model).

A job re-queued after a restart acts as its tenant through ``common.peers.credentials``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from tuneforge.common import tracing
from tuneforge.common.auth import Identity
from tuneforge.common.errors import InvalidInput, NotFound, TuneforgeError
from tuneforge.common.peers.clients import (
    CheckpointDraft,
    CheckpointFile,
    GrpcCheckpoints,
    GrpcDatasetVersions,
)
from tuneforge.common.peers.models import StoreModelResolver
from tuneforge.common.peers.objects import key_in_store
from tuneforge.common.storage import ObjectStore, tenant_prefix
from tuneforge.common.storage.artifacts import MANIFEST_NAME, read_manifest
from tuneforge.engine.spec import MethodKind
from tuneforge.training.domain.model import Job, JobCheckpoint
from tuneforge.training.domain.ports import StoreRef, VersionFacts

FIELD = "base_model"
RM_FIELD = "hyperparameters.reward_model"


class PeerDatasets:
    """Implements ``DatasetAccess``."""

    def __init__(self, versions: GrpcDatasetVersions, store: ObjectStore) -> None:
        self._versions, self._store = versions, store

    def acquire_lease(self, caller: Identity, version_id: str, holder: str) -> VersionFacts:
        """Lease the version (idempotent); its kind, split sizes and manifest come back with it."""
        info = self._versions.acquire_lease(caller, version_id, holder)
        return VersionFacts(info.version_id, info.kind, dict(info.split_counts), info.manifest_uri)

    def release_lease(self, caller: Identity, version_id: str, holder: str) -> None:
        """Release the lease (a version deleted meanwhile is not an error)."""
        try:
            self._versions.release_lease(caller, version_id, holder)
        except NotFound:
            return

    def reference(self, facts: VersionFacts) -> StoreRef:
        """The version's manifest in the shared store, pinned by the sha256 of its bytes (which list
        every shard's sha256: the workers verify the whole version against this one hash)."""
        key = key_in_store(self._store, facts.manifest_uri, f"dataset version {facts.version_id!r}")
        raw = self._store.get_bytes(key)
        return StoreRef(self._store.uri, key, hashlib.sha256(raw).hexdigest())

    def describe(self, caller: Identity, version_id: str) -> VersionFacts:
        """The version's kind, split sizes and manifest, without a lease."""
        info = self._versions.get(caller, version_id)
        return VersionFacts(info.version_id, info.kind, dict(info.split_counts), info.manifest_uri)

    def token_stats(self, facts: VersionFacts) -> Mapping[str, float]:
        """``extra.stats`` of the version's manifest: token-length percentiles per row and the row count."""
        try:
            key = key_in_store(self._store, facts.manifest_uri, f"dataset version {facts.version_id!r}")
            stats = json.loads(self._store.get_bytes(key)).get("extra", {}).get("stats", {})
            out = {k: float(v) for k, v in stats.get("token_length_percentiles", {}).items()}
            if isinstance(stats.get("row_count"), int):
                out["row_count"] = float(stats["row_count"])
            return out
        except (TuneforgeError, ValueError, AttributeError, TypeError):
            return {}


@dataclass(frozen=True)
class _Ref:
    base_model: str = ""
    checkpoint_id: str = ""


class PeerModels:
    """Implements ``ModelLocator`` with the shared resolver."""

    def __init__(self, resolver: StoreModelResolver, store: ObjectStore, models_dir: Path) -> None:
        self._resolver, self._store, self._models_dir = resolver, store, models_dir

    def reference(self, caller: Identity, base_model: str) -> StoreRef | None:
        """The registered model's manifest in the store. A model only in ``TUNEFORGE_MODELS_DIR`` (a
        pre-seeded folder) is registered from there first, so workers never need that folder."""
        if base_model.startswith("ckpt_"):
            return None
        from tuneforge.engine.models.registry import import_model, model_prefix, reference

        try:
            prefix = model_prefix(caller.tenant, base_model)
        except InvalidInput as exc:
            raise InvalidInput.field_error(FIELD, exc.violations[0].description) from None
        if not self._store.exists(prefix + MANIFEST_NAME):
            local = self._models_dir / base_model
            if not (local / "config.json").is_file():
                raise NotFound(f"{FIELD}: base model {base_model!r} is not registered (no {prefix} in the object "
                               f"store, nor {local}): register it with `python -m tuneforge.engine.models import`")
            import_model(self._store, caller.tenant, base_model, local)
        ref = reference(self._store, prefix)
        return StoreRef(ref.store_uri, ref.manifest_key, ref.manifest_sha256)

    def config(self, caller: Identity, base_model: str) -> Mapping[str, Any] | None:
        """``config.json`` of a registered base model (read from the store, not downloaded with its
        weights) or of a full-weight checkpoint's local folder; None when unreadable."""
        try:
            if base_model.startswith("ckpt_"):
                return json.loads((self.locate(caller, base_model) / "config.json").read_text())
            ref = self.reference(caller, base_model)
            if ref is None:
                return None
            prefix = ref.manifest_key.removesuffix(MANIFEST_NAME)
            names = sorted((f.path for f in read_manifest(self._store, prefix).files
                            if PurePosixPath(f.path).name == "config.json"), key=len)
            return json.loads(self._store.get_bytes(prefix + names[0])) if names else None
        except (OSError, ValueError):
            return None

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

    def locate_reward_model(self, caller: Identity, name: str) -> tuple[Path, Path | None]:
        """A reward model's local folder and, for a reward-model job's LoRA checkpoint, its adapter
        folder (applied on the base by the workers); a model that is no reward model is refused."""
        if "://" in name:
            raise InvalidInput.field_error(RM_FIELD, "model URIs are not accepted: name a reward-model checkpoint "
                                                     "id (ckpt_...) or a registered sequence classifier")
        ref = _Ref(checkpoint_id=name) if name.startswith("ckpt_") else _Ref(base_model=name)
        resolved = self._resolver.resolve(caller, ref)
        if not _is_reward_model(resolved.model_dir, resolved.adapter_dir):
            raise InvalidInput.field_error(RM_FIELD, f"{name} is not a reward model (a sequence classifier with one "
                                                     "label): name the checkpoint of an OBJECTIVE_REWARD_MODEL job")
        return resolved.model_dir, resolved.adapter_dir


def _is_reward_model(model_dir: Path, adapter_dir: Path | None) -> bool:
    """A reward model's LoRA (peft task SEQ_CLS) or a one-label sequence classifier, by their configs."""
    try:
        if adapter_dir is not None:
            return json.loads((adapter_dir / "adapter_config.json").read_text()).get("task_type") == "SEQ_CLS"
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    heads = [a for a in config.get("architectures") or () if str(a).endswith("ForSequenceClassification")]
    labels = config.get("num_labels", len(config.get("id2label") or {}) or 1)
    return bool(heads) and labels == 1


_KIND = {MethodKind.FULL: "FULL", MethodKind.LORA: "LORA", MethodKind.QLORA: "LORA", MethodKind.PREFIX: "PREFIX",
         MethodKind.PROMPT: "PREFIX"}


class RegisteringPublisher:
    """Implements ``CheckpointPublisher``."""

    def __init__(self, store: ObjectStore, checkpoints: GrpcCheckpoints) -> None:
        self._store, self._checkpoints = store, checkpoints

    def publish(self, caller: Identity, job: Job, uri: str, step: int, metrics: Mapping[str, float],
                dataset_version_id: str) -> JobCheckpoint:
        """Register the committed checkpoint at ``uri`` (idempotent for the same job, step and files)."""
        with tracing.span("training.checkpoint.publish", {"tuneforge.tenant": job.tenant, "tuneforge.job_id": job.id,
                                                          "tuneforge.step": step}):
            return self._publish(caller, job, uri, step, metrics, dataset_version_id)

    def _publish(self, caller: Identity, job: Job, uri: str, step: int, metrics: Mapping[str, float],
                 dataset_version_id: str) -> JobCheckpoint:
        folder = key_in_store(self._store, uri, f"checkpoint of job {job.id}").rstrip("/") + "/"
        root = f"{tenant_prefix(job.tenant)}checkpoints/"
        if not folder.startswith(root):
            raise NotFound(f"checkpoint {uri} is outside the tenant's checkpoint area {root}")
        manifest = read_manifest(self._store, folder)
        recorded = manifest.extra.get("metrics")
        extra_metrics: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
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
