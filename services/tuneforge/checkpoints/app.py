"""Composition root of the checkpoint service: settings -> adapters -> domain -> servicer -> server.

Fails fast at start-up: the object store must be reachable and writable (the store probes it)
and the database is migrated before the port opens. A background thread runs store hygiene
(orphans, interrupted deletions, stale multipart uploads) every ``hygiene_interval_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from tuneforge.checkpoints.adapters import tables
from tuneforge.checkpoints.adapters.export import RayExportRunner, StoreExporter
from tuneforge.checkpoints.adapters.hygiene import CheckpointJanitor
from tuneforge.checkpoints.adapters.metrics import ObservedExporter, ObservedFiles, ObservedRepository
from tuneforge.checkpoints.adapters.objects import StoreCheckpointFiles
from tuneforge.checkpoints.adapters.sql import SqlCheckpointRepository
from tuneforge.checkpoints.domain.service import CheckpointRegistry
from tuneforge.checkpoints.servicer import CheckpointServicer
from tuneforge.checkpoints.settings import CheckpointSettings
from tuneforge.checkpoints.v1 import checkpoints_pb2, checkpoints_pb2_grpc
from tuneforge.common import db
from tuneforge.common.db.idempotency import SqlIdempotencyStore
from tuneforge.common.grpc.server import RunningServer, build_server
from tuneforge.common.idempotency import Idempotency
from tuneforge.common.metrics import ServiceMetrics
from tuneforge.common.periodic import start_periodic
from tuneforge.common.storage import open_object_store

log = logging.getLogger(__name__)

SERVICE_NAME = checkpoints_pb2.DESCRIPTOR.services_by_name["CheckpointService"].full_name
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = db.version_table_for("checkpoints")


def build_app(settings: CheckpointSettings) -> RunningServer:
    """Wire and start the checkpoint service; raises a ``TuneforgeError`` when a dependency is unusable."""
    store = open_object_store(settings.resolved_object_store_uri(),
                              access_key=settings.s3_access_key.get_secret_value() or None,
                              secret_key=settings.s3_secret_key.get_secret_value() or None)
    engine = db.create_db_engine(settings.resolved_database_url())
    db.run_migrations(engine, MIGRATIONS_DIR, VERSION_TABLE)
    sessions = db.make_sessionmaker(engine)
    repo = SqlCheckpointRepository(sessions)
    ray = None
    if settings.export_ray_address:
        ray = RayExportRunner("" if settings.export_ray_address == "local" else settings.export_ray_address)
    exporter = StoreExporter(store, settings.models_dir, settings.data_dir / "work", ray)
    exporter.folders.sweep(startup=True)  # what a killed process left mid-export
    metrics = ServiceMetrics(settings.service_name)
    registry = CheckpointRegistry(ObservedRepository(repo, metrics),  # checkpoint metrics taken at the ports
                                  ObservedFiles(StoreCheckpointFiles(store), metrics), ObservedExporter(exporter, metrics))
    keys = SqlIdempotencyStore(sessions, tables.idempotency_keys)
    keys.clear_pending()  # exports of a stopped process: their retries run them again
    servicer = CheckpointServicer(registry, store.uri, settings.download_chunk_bytes, Idempotency(keys))
    janitor = CheckpointJanitor(store, repo, orphan_grace=timedelta(seconds=settings.orphan_grace_s),
                                upload_timeout=timedelta(seconds=settings.upload_timeout_s))
    janitor.install_lifecycle_rule()
    server = build_server(settings, [(checkpoints_pb2_grpc.add_CheckpointServiceServicer_to_server, servicer)],
                          [SERVICE_NAME], metrics)
    stop = _start_hygiene(janitor, settings.hygiene_interval_s)
    stop_sweeper = exporter.folders.start_sweeper(settings.work_sweep_interval_s)
    server.on_stop.extend([engine.dispose, stop, stop_sweeper])
    return server


def _start_hygiene(janitor: CheckpointJanitor, interval_s: float) -> Callable[[], None]:
    return start_periodic(janitor.run_once, interval_s, name="checkpoint-hygiene", what="checkpoint hygiene pass")
