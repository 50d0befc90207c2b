"""Composition root of the dataset service: settings -> adapters -> domain -> servicer -> server.

Fails fast at start-up: the object store must be usable (the store probes it), the database is
migrated, and the work folder (upload spools, staging, version cache) must be writable.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.common import db
from tuneforge.common.db.idempotency import SqlIdempotencyStore
from tuneforge.common.errors import Unavailable
from tuneforge.common.grpc.server import RunningServer, build_server
from tuneforge.common.idempotency import Idempotency
from tuneforge.common.metrics import ServiceMetrics
from tuneforge.common.storage import open_object_store
from tuneforge.datasets.adapters import tables
from tuneforge.datasets.adapters.generator import LocalTextGenerators
from tuneforge.datasets.adapters.metrics import ObservedCatalog
from tuneforge.datasets.adapters.objects import StoreVersionFiles
from tuneforge.datasets.adapters.sql import SqlCatalog
from tuneforge.datasets.domain.archives import ArchiveLimits
from tuneforge.datasets.domain.ingest import IngestLimits
from tuneforge.datasets.domain.runs import CurationRuns
from tuneforge.datasets.domain.service import DatasetCatalogService
from tuneforge.datasets.servicer import DatasetServicer
from tuneforge.datasets.settings import DatasetSettings
from tuneforge.datasets.v1 import datasets_pb2, datasets_pb2_grpc

SERVICE_NAME = datasets_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = db.version_table_for("datasets")


def _work_dir(settings: DatasetSettings) -> Path:
    work = settings.data_dir / "work"
    try:
        work.mkdir(parents=True, exist_ok=True)
        probe = work / ".write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise Unavailable(f"work folder {work} is not writable ({exc}): fix TUNEFORGE_DATA_DIR") from exc
    return work


def build_app(settings: DatasetSettings) -> RunningServer:
    """Wire and start the dataset service; raises a ``TuneforgeError`` when a dependency is unusable."""
    work = _work_dir(settings)
    store = open_object_store(settings.resolved_object_store_uri(),
                              access_key=settings.s3_access_key.get_secret_value() or None,
                              secret_key=settings.s3_secret_key.get_secret_value() or None)
    engine = db.create_db_engine(settings.resolved_database_url())
    db.run_migrations(engine, MIGRATIONS_DIR, VERSION_TABLE)
    limits = IngestLimits(settings.max_upload_bytes, settings.max_row_bytes, settings.max_rows,
                          ArchiveLimits(settings.max_archive_bytes, settings.max_archive_entries,
                                        settings.max_expansion_ratio), settings.max_mixture_rows)
    sessions = db.make_sessionmaker(engine)
    metrics = ServiceMetrics(settings.service_name)
    catalog = ObservedCatalog(SqlCatalog(sessions), metrics)  # curation metrics from the run events
    service = DatasetCatalogService(catalog, StoreVersionFiles(store, work / "cache"),
                                    work, store.uri, limits, LocalTextGenerators(settings.models_dir))
    service.folders.sweep(startup=True)  # what a killed process left (spools, staging, downloads)
    runs = CurationRuns(service, settings.curation_workers)
    keys = SqlIdempotencyStore(sessions, tables.idempotency_keys)
    keys.clear_pending()  # requests of a stopped process: their retries run them again
    servicer = DatasetServicer(service, runs, settings.max_upload_bytes, Idempotency(keys))
    server = build_server(settings, [(datasets_pb2_grpc.add_DatasetServiceServicer_to_server, servicer)],
                          [SERVICE_NAME], metrics)
    stop_sweeper = service.folders.start_sweeper(settings.work_sweep_interval_s)
    server.on_stop.extend([engine.dispose, stop_sweeper, runs.shutdown])  # hooks run in reverse: runs drain first
    return server
