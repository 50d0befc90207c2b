"""Composition root of the dataset service: settings -> adapters -> domain -> servicer -> server.

Fails fast at start-up: the object store must be usable (the store probes it), the database is
migrated, and the work folder (upload spools, staging, version cache) must be writable.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from tuneforge.common import db
from tuneforge.common.errors import Unavailable
from tuneforge.common.grpc.server import RunningServer, build_server
from tuneforge.common.settings import ServiceSettings
from tuneforge.common.storage import open_object_store
from tuneforge.datasets.adapters.generator import LocalTextGenerators
from tuneforge.datasets.adapters.objects import StoreVersionFiles
from tuneforge.datasets.adapters.sql import SqlCatalog
from tuneforge.datasets.domain.archives import ArchiveLimits
from tuneforge.datasets.domain.ingest import IngestLimits
from tuneforge.datasets.domain.runs import CurationRuns
from tuneforge.datasets.domain.service import DatasetCatalogService
from tuneforge.datasets.servicer import DatasetServicer
from tuneforge.datasets.v1 import datasets_pb2, datasets_pb2_grpc

SERVICE_NAME = datasets_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = db.version_table_for("datasets")


class DatasetSettings(ServiceSettings):
    """Dataset service settings (``TUNEFORGE_*``)."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="forbid", validate_default=True)
    service_name: str = "datasets"
    max_upload_bytes: int = Field(10 << 30, ge=1, description="Largest upload (compressed bytes).")
    max_row_bytes: int = Field(1 << 20, ge=64, description="Largest row in bytes.")
    max_rows: int = Field(50_000_000, ge=1, description="Most rows per file.")
    max_archive_bytes: int = Field(20 << 30, ge=1, description="Most bytes an archive or compressed file expands to.")
    max_archive_entries: int = Field(1000, ge=1, description="Most entries in a zip/tar archive.")
    max_expansion_ratio: float = Field(200.0, ge=1, description="Most decompressed/compressed size ratio.")
    curation_workers: int = Field(2, ge=1, le=64, description="Curation runs executed at once.")


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
                                        settings.max_expansion_ratio))
    service = DatasetCatalogService(SqlCatalog(db.make_sessionmaker(engine)), StoreVersionFiles(store, work / "cache"),
                                    work, store.uri, limits, LocalTextGenerators(settings.models_dir))
    runs = CurationRuns(service, settings.curation_workers)
    servicer = DatasetServicer(service, runs, work, settings.max_upload_bytes)
    server = build_server(settings, [(datasets_pb2_grpc.add_DatasetServiceServicer_to_server, servicer)],
                          [SERVICE_NAME])
    server.on_stop.extend([engine.dispose, runs.shutdown])  # hooks run in reverse: runs drain first
    return server
