"""Model resolution: a base model name or a checkpoint -> local folders (evaluation and training).

- A base model is named: ``tenants/<tenant>/models/<name>/`` in the object store (a committed
  artifact, downloaded and verified once), else ``<models_dir>/<name>/`` on the service's disk:
  the same convention as the checkpoint service's merged export.
- A checkpoint (id or ``<job_id>@<alias>``) is looked up through the checkpoint service on the
  caller's behalf (``GetManifest``). Only its model folder is downloaded (the shallowest folder
  holding ``adapter_config.json`` for adapters, ``config.json`` for full weights), not optimizer or
  trainer state; each file is checked against the manifest's size and sha256. A LoRA adapter is
  applied onto ``lineage.base_model``, resolved like any base model.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Protocol

from tuneforge.common.auth import Identity
from tuneforge.common.errors import FailedPrecondition, InvalidInput, NotFound
from tuneforge.common.peers.clients import CheckpointFile, CheckpointInfo
from tuneforge.common.peers.objects import download_verified, key_in_store
from tuneforge.common.peers.types import ResolvedModel
from tuneforge.common.public_text import echo
from tuneforge.common.storage import ObjectStore, tenant_prefix
from tuneforge.common.storage.artifacts import read_manifest
from tuneforge.common.storage.refs import StoredFile, StoredFolder

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127})?")
ADAPTER_CONFIG, MODEL_CONFIG = "adapter_config.json", "config.json"


class ModelReference(Protocol):
    """A base model by name, or (when ``base_model`` is empty) a checkpoint id or ``<job_id>@<alias>``."""

    @property
    def base_model(self) -> str:
        """Registered base model name ('' for a checkpoint)."""
        ...

    @property
    def checkpoint_id(self) -> str:
        """Checkpoint id or ``<job_id>@<alias>`` ('' for a base model)."""
        ...


class CheckpointLookup(Protocol):
    """Reads checkpoint manifests for a caller (the checkpoint service's ``GetManifest``)."""

    def lookup(self, caller: Identity, checkpoint: str) -> CheckpointInfo:
        """The checkpoint's folder, kind, lineage and files; ``NotFound`` when absent or foreign."""
        ...


def model_folder(files: tuple[CheckpointFile, ...], marker: str) -> str:
    """The shallowest folder (``""`` = the root) among ``files`` that holds ``marker``.

    Raises:
        FailedPrecondition: no file named ``marker``.
    """
    hits = sorted((PurePosixPath(f.path).parent for f in files if PurePosixPath(f.path).name == marker),
                  key=lambda p: (len(p.parts), str(p)))
    if not hits:
        raise FailedPrecondition(
            f"the checkpoint holds no {marker}: register a folder with a Hugging Face model or PEFT adapter")
    return "" if str(hits[0]) == "." else f"{hits[0]}/"


class StoreModelResolver:
    """Resolves base models by name and checkpoints through the checkpoint service.

    Args:
        store: the object store shared with the checkpoint service.
        models_dir: local base models by name (``TUNEFORGE_MODELS_DIR``).
        checkpoints: the checkpoint service, or None when none is configured.
        cache_dir: where downloaded models and adapters are kept (they are immutable).
        base_field: the request field named in errors about a base model.
        checkpoint_field: the request field named in errors about a checkpoint.
    """

    def __init__(self, store: ObjectStore, models_dir: Path, checkpoints: CheckpointLookup | None,
                 cache_dir: Path, *, base_field: str = "model.base_model",
                 checkpoint_field: str = "model.checkpoint_id") -> None:
        self._store, self._models_dir, self._checkpoints, self._cache = store, models_dir, checkpoints, cache_dir
        self._base_field, self._ckpt_field = base_field, checkpoint_field

    def check(self, caller: Identity, ref: ModelReference) -> None:
        """Fail now on an unknown base model or an unknown/foreign checkpoint (nothing downloaded)."""
        if ref.base_model:
            self._base_location(caller.tenant, ref.base_model, self._base_field)
        else:
            self._lookup(caller, ref.checkpoint_id)

    def resolve(self, caller: Identity, ref: ModelReference, *, download: bool = True) -> ResolvedModel:
        """Local folders for a base model or a checkpoint (adapter applied onto its base), with their
        store references; ``download=False`` fetches nothing (the task fetches where it runs)."""
        if ref.base_model:
            folder, source = self._base(caller.tenant, ref.base_model, self._base_field, download)
            return ResolvedModel(folder, model_source=source)
        info = self._lookup(caller, ref.checkpoint_id)
        folder, ckpt_source = self._download_checkpoint(caller.tenant, info, download)
        if not info.is_adapter:
            return ResolvedModel(folder, None, info.checkpoint_id, info.job_id, model_source=ckpt_source)
        if not info.base_model:
            raise FailedPrecondition(
                f"checkpoint {info.checkpoint_id} is an adapter without lineage.base_model: register it with the "
                "name of the base model it was trained on")
        base, base_source = self._base(caller.tenant, info.base_model, self._ckpt_field, download)
        return ResolvedModel(base, folder, info.checkpoint_id, info.job_id, model_source=base_source,
                             adapter_source=ckpt_source)

    def _lookup(self, caller: Identity, checkpoint: str) -> CheckpointInfo:
        if self._checkpoints is None:
            raise FailedPrecondition(
                f"{self._ckpt_field}: no checkpoint service is configured: set TUNEFORGE_CHECKPOINTS_ADDRESS")
        return self._checkpoints.lookup(caller, checkpoint)

    def _base_location(self, tenant: str, name: str, field: str) -> str | Path:
        """The store prefix or local folder of base model ``name``."""
        if not _MODEL_NAME.fullmatch(name) or ".." in name:
            raise InvalidInput.field_error(field, f"{echo(name)} is not a model name such as 'smollm2-135m' or 'org/model'")
        prefix = f"{tenant_prefix(tenant)}models/{name}/"
        if self._store.exists(prefix + "MANIFEST.json"):
            return prefix
        local = self._models_dir / name
        if (local / MODEL_CONFIG).is_file():
            return local
        raise NotFound(
            f"{field}: base model {echo(name)} is neither in the object store at {prefix} nor in the models folder "
            f"({self._models_dir}/{name}): put its safetensors folder in one of them")

    def _base(self, tenant: str, name: str, field: str, download: bool = True) -> tuple[Path, StoredFolder | None]:
        where = self._base_location(tenant, name, field)
        if isinstance(where, Path):
            return where, None
        manifest = read_manifest(self._store, where)
        folder = self._cache / where.rstrip("/")
        source = StoredFolder(self._store.uri, where, tuple(StoredFile(f.path, f.size, f.sha256) for f in manifest.files))
        if download:
            for f in manifest.files:
                download_verified(self._store, where + f.path, folder / f.path, f.size, f.sha256)
        return folder, source

    def _download_checkpoint(self, tenant: str, info: CheckpointInfo,
                             download: bool = True) -> tuple[Path, StoredFolder]:
        folder_key = key_in_store(self._store, info.folder_uri, f"checkpoint {info.checkpoint_id}")
        if not folder_key.startswith(tenant_prefix(tenant)):
            raise NotFound(f"checkpoint {info.checkpoint_id} not found")  # guards a misconfigured peer
        root = model_folder(info.files, ADAPTER_CONFIG if info.is_adapter else MODEL_CONFIG)
        dest = self._cache / tenant / "checkpoints" / info.checkpoint_id
        files = [f for f in info.files if f.path.startswith(root) and ".." not in PurePosixPath(f.path).parts]
        source = StoredFolder(self._store.uri, folder_key.rstrip("/") + "/" + root,
                              tuple(StoredFile(f.path[len(root):], f.size, f.sha256) for f in files))
        if download:
            for f in files:
                download_verified(self._store, folder_key.rstrip("/") + "/" + f.path,
                                  dest / f.path[len(root):], f.size, f.sha256)
        return dest, source
