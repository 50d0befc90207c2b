"""Helpers shared by the checkpoint tests: build a registry on real adapters, upload folders."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from tuneforge.checkpoints.adapters.objects import StoreCheckpointFiles, folder_key
from tuneforge.checkpoints.adapters.sql import SqlCheckpointRepository
from tuneforge.checkpoints.app import MIGRATIONS_DIR, VERSION_TABLE
from tuneforge.checkpoints.domain.model import CheckpointDraft, CheckpointKind, FileEntry
from tuneforge.checkpoints.domain.service import CheckpointRegistry
from tuneforge.common import db
from tuneforge.common.storage import ObjectStore
from tuneforge.common.storage.checkpoint_writer import CheckpointWriter


def make_registry(store: ObjectStore, db_url: str, **kwargs: object) -> tuple[CheckpointRegistry,
                                                                             SqlCheckpointRepository]:
    """A registry on a migrated database and ``store``."""
    engine = db.create_db_engine(db_url)
    db.run_migrations(engine, MIGRATIONS_DIR, VERSION_TABLE)
    repo = SqlCheckpointRepository(db.make_sessionmaker(engine))
    return CheckpointRegistry(repo, StoreCheckpointFiles(store), **kwargs), repo  # type: ignore[arg-type]


def upload(store: ObjectStore, tenant: str, prefix: str, files: Mapping[str, bytes]) -> tuple[FileEntry, ...]:
    """Write ``files`` as the engine does (CheckpointWriter) and return their manifest entries."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        written = CheckpointWriter(store, retries=0).write(Path(tmp), folder_key(tenant, prefix))
    return tuple(FileEntry(f.path, f.size, f.sha256) for f in written.files)


def draft(job: str, step: int, files: tuple[FileEntry, ...], loss: float | None = None,
          prefix: str | None = None, kind: CheckpointKind = CheckpointKind.LORA,
          base_model: str = "") -> CheckpointDraft:
    """A registration request for ``files`` uploaded at ``<job>/step-<step>``."""
    from tuneforge.checkpoints.domain.model import Lineage

    return CheckpointDraft(
        job_id=job, step=step, kind=kind, prefix=prefix or f"{job}/step-{step}", files=files,
        metrics={} if loss is None else {"eval_loss": loss},
        config={"lr": 1e-4}, lineage=Lineage(job_id=job, base_model=base_model),
    )


def store_and_register(registry: CheckpointRegistry, store: ObjectStore, tenant: str, job: str, step: int,
                       loss: float | None = None, payload: bytes | None = None):
    """Upload a small two-file checkpoint and register it; returns the Registration."""
    data = payload if payload is not None else f"weights of {job} at {step}".encode() * 100
    files = upload(store, tenant, f"{job}/step-{step}", {"adapter_model.safetensors": data,
                                                        "trainer_state.json": b'{"step": %d}' % step})
    return registry.register(tenant, draft(job, step, files, loss))
