"""Composition root of the training service: settings -> adapters -> domain -> servicer -> server.

Fails fast at start-up: the object store must be reachable and writable (the store probes it), the
database is migrated and the work folder writable before the port opens. The peers
(``TUNEFORGE_DATASETS_ADDRESS``, ``TUNEFORGE_CHECKPOINTS_ADDRESS``) are required to run jobs but not
to start: without them the service serves health, GetJob/ListJobs/StreamJobEvents, and CreateJob
answers FAILED_PRECONDITION naming the missing setting (so a half-configured stack says what is
missing at the call that needs it, and health probes still pass).

Jobs wait QUEUED in the database and every replica's dispatcher claims them under leases (see
``domain/dispatcher.py``): on PostgreSQL several replicas share the work, and a replica that dies
loses its jobs to the others once their leases expire (they resume from their latest complete
checkpoint). SQLite is the one-replica embedded default: at start-up every lease left belongs to a
dead process and ends at once. On stop, running jobs are interrupted after their current step and
handed back QUEUED (lease released) for another replica or the next process.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tuneforge.common import db
from tuneforge.common.errors import FailedPrecondition
from tuneforge.common.grpc.server import RunningServer, build_server
from tuneforge.common.metrics import ServiceMetrics
from tuneforge.common.peers.clients import GrpcCheckpoints, GrpcDatasetVersions
from tuneforge.common.peers.credentials import ConfiguredTenantTokens
from tuneforge.common.peers.models import StoreModelResolver
from tuneforge.common.storage import open_object_store
from tuneforge.training.adapters.engine import EngineRunner
from tuneforge.training.adapters.files import DirIntegrationSecrets, StoreJobFiles
from tuneforge.training.adapters.metrics import JobCountCollector, ObservedJobRepository
from tuneforge.training.adapters.peers import PeerDatasets, PeerModels, RegisteringPublisher
from tuneforge.training.adapters.sql import SqlJobRepository
from tuneforge.training.convert import api_field
from tuneforge.training.domain.dispatcher import DispatchSettings
from tuneforge.training.domain.service import Dependencies, TrainingService
from tuneforge.training.servicer import TrainingServicer
from tuneforge.training.settings import TrainingSettings
from tuneforge.training.v1 import training_pb2, training_pb2_grpc

__all__ = ["SERVICE_NAME", "TrainingSettings", "build_app", "build_service"]

log = logging.getLogger(__name__)

SERVICE_NAME = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = db.version_table_for("training")


def _missing_peers(settings: TrainingSettings) -> tuple[str, ...]:
    missing = tuple(f"TUNEFORGE_{name.upper()}_ADDRESS" for name, address in
                    (("datasets", settings.datasets_address), ("checkpoints", settings.checkpoints_address))
                    if not address)
    if missing:
        log.warning("%s not set: CreateJob will answer FAILED_PRECONDITION until configured", " and ".join(missing))
    return missing


def _work_dir(settings: TrainingSettings) -> Path:
    work = settings.resolved_work_dir()
    try:
        work.mkdir(parents=True, exist_ok=True)
        probe = work / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise FailedPrecondition(f"the work folder {work} is not writable ({exc.strerror}): set "
                                 "TUNEFORGE_TRAIN_WORK_DIR to a writable folder") from None
    return work


def build_service(settings: TrainingSettings,
                  metrics: ServiceMetrics | None = None) -> tuple[TrainingService, list]:
    """Wire the domain service; returns it with the hooks to run on stop (in reverse order).

    Job metrics are recorded where job events are appended (``ObservedJobRepository``) and counted in
    the database at scrape time (``JobCountCollector``), into ``metrics`` (a new registry when None)."""
    metrics = metrics or ServiceMetrics(settings.service_name)
    store_uri = settings.resolved_object_store_uri()
    store = open_object_store(store_uri, access_key=settings.s3_access_key.get_secret_value() or None,
                              secret_key=settings.s3_secret_key.get_secret_value() or None)
    quotas = settings.quotas()  # a malformed TUNEFORGE_TRAIN_TENANT_QUOTAS stops the start-up, named
    engine = db.create_db_engine(settings.resolved_database_url())
    single = engine.dialect.name == "sqlite"
    if single:
        log.info("SQLite metadata store: this training service runs as the only replica (use PostgreSQL, "
                 "TUNEFORGE_DATABASE_URL=postgresql+psycopg://..., to run several)")
    db.run_migrations(engine, MIGRATIONS_DIR, VERSION_TABLE)
    work = _work_dir(settings)
    timeout = settings.train_peer_timeout_s
    versions = GrpcDatasetVersions(settings.datasets_address, timeout)
    checkpoints = GrpcCheckpoints(settings.checkpoints_address, timeout)
    resolver = StoreModelResolver(store, settings.models_dir, checkpoints, settings.data_dir / "cache" / "models",
                                  base_field="base_model", checkpoint_field="base_model")
    executor = ThreadPoolExecutor(max_workers=settings.max_running_jobs, thread_name_prefix="training-job")
    sessions = db.make_sessionmaker(engine)
    files, secrets = StoreJobFiles(store), DirIntegrationSecrets(settings.integration_secrets_dir)
    metrics.register(JobCountCollector(sessions))
    deps = Dependencies(
        repository=ObservedJobRepository(SqlJobRepository(sessions), metrics),
        datasets=PeerDatasets(versions, store),
        models=PeerModels(resolver, store, settings.models_dir),
        checkpoints=RegisteringPublisher(store, checkpoints),
        engine=EngineRunner(files, secrets, work),
        credentials=ConfiguredTenantTokens(settings.auth_tokens.get_secret_value(),
                                           auth_disabled=settings.auth_disabled, service_name="training"),
        executor=executor,
        store_uri=store.uri,
        work_dir=work,
        ray_address=settings.train_ray_address or os.environ.get("RAY_ADDRESS", ""),
        peers_missing=_missing_peers(settings),
        limits=settings.limits(),
        capacity=settings.capacity(),
        field_name=api_field,
        dispatch=DispatchSettings(settings.replica_id(), settings.max_running_jobs, settings.train_lease_ttl_s,
                                  settings.train_heartbeat_interval_s, settings.train_dispatch_poll_s, quotas),
        single_replica=single,
        files=files,
        integrations=secrets,
    )
    service = TrainingService(deps)
    pending = service.start()
    log.info("training replica %s dispatching (lease TTL %.0fs); %d job(s) queued or running", settings.replica_id(),
             settings.train_lease_ttl_s, len(pending))

    def stop_jobs() -> None:
        service.shutdown()
        executor.shutdown(wait=True, cancel_futures=True)
        service.close()

    return service, [versions.close, checkpoints.close, engine.dispose, stop_jobs]


def build_app(settings: TrainingSettings) -> RunningServer:
    """Wire and start the training service; raises a ``TuneforgeError`` when a dependency is unusable."""
    metrics = ServiceMetrics(settings.service_name)
    service, hooks = build_service(settings, metrics)
    servicer = TrainingServicer(service, poll_interval_s=settings.train_poll_interval_s)
    server = build_server(settings, [(training_pb2_grpc.add_TrainingServiceServicer_to_server, servicer)],
                          [SERVICE_NAME], metrics)
    server.on_stop.extend(hooks)
    # Claim nothing more and stop this replica's runs after their current step as soon as the stop
    # begins: their jobs go back to the queue now, not after the watch streams drained.
    server.on_stopping.append(service.shutdown)
    return server
