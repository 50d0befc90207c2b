"""Composition root of the evaluation service: settings -> adapters -> domain -> servicer -> server.

Fails fast at start-up: the object store must be reachable and writable (the store probes it) and
the database is migrated before the port opens, and evaluations a stopped process left QUEUED or
RUNNING are marked FAILED (their runs died with it) and their dataset leases released as the
tenant (a token of it from ``TUNEFORGE_AUTH_TOKENS``: the creator's is gone). Dataset versions and checkpoints are resolved
through the dataset and checkpoint services (``TUNEFORGE_DATASETS_ADDRESS``,
``TUNEFORGE_CHECKPOINTS_ADDRESS``) on the caller's behalf, their files read from the object store
all services share; base models by name from ``TUNEFORGE_MODELS_DIR``. Evaluations run on a small
background pool; their engine tasks run in-process, or on Ray when ``TUNEFORGE_EVAL_RAY_ADDRESS`` is
set and a job is larger than ``eval_inline_threshold_samples``. Every dataset version an evaluation
reads is leased from the dataset service (holder ``evaluation:<id>``) from its creation to its end.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tuneforge.common import db
from tuneforge.common.db.idempotency import SqlIdempotencyStore
from tuneforge.common.grpc.server import RunningServer, build_server
from tuneforge.common.idempotency import Idempotency
from tuneforge.common.logging import ContextThreadPoolExecutor
from tuneforge.common.metrics import ServiceMetrics
from tuneforge.common.peers.clients import GrpcCheckpoints, GrpcDatasetVersions
from tuneforge.common.peers.credentials import ConfiguredTenantTokens
from tuneforge.common.peers.objects import StoreDatasetReader
from tuneforge.common.storage import open_object_store
from tuneforge.evaluation.adapters import tables
from tuneforge.evaluation.adapters.metrics import ObservedRepository
from tuneforge.evaluation.adapters.models import StoreModelResolver
from tuneforge.evaluation.adapters.objects import StoreReportStore
from tuneforge.evaluation.adapters.peers import PeerDatasetLeases
from tuneforge.evaluation.adapters.runners import InProcessRunner, RayRunner
from tuneforge.evaluation.adapters.safety import CurationSafetyScorer
from tuneforge.evaluation.adapters.sql import SqlEvaluationRepository
from tuneforge.evaluation.domain.model import Limits
from tuneforge.evaluation.domain.service import Dependencies, EvaluationService, Runners
from tuneforge.evaluation.servicer import EvaluationServicer
from tuneforge.evaluation.settings import EvaluationSettings
from tuneforge.evaluation.v1 import evaluation_pb2, evaluation_pb2_grpc

__all__ = ["EvaluationSettings", "build_app", "build_service"]

log = logging.getLogger(__name__)

SERVICE_NAME = evaluation_pb2.DESCRIPTOR.services_by_name["EvaluationService"].full_name
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = db.version_table_for("evaluation")


def _peers_configured(settings: EvaluationSettings) -> None:
    for name, address in (("datasets", settings.datasets_address), ("checkpoints", settings.checkpoints_address)):
        if not address:
            log.warning("TUNEFORGE_%s_ADDRESS is not set: evaluations that need the %s service will fail",
                        name.upper(), name)


def build_service(settings: EvaluationSettings,
                  metrics: ServiceMetrics | None = None) -> tuple[EvaluationService, list]:
    """Wire the domain service; returns it with the hooks to run on stop. Evaluation metrics go to
    ``metrics`` (a new registry when None), taken where progress events are recorded."""
    metrics = metrics or ServiceMetrics(settings.service_name)
    store = open_object_store(settings.resolved_object_store_uri(),
                              access_key=settings.s3_access_key.get_secret_value() or None,
                              secret_key=settings.s3_secret_key.get_secret_value() or None)
    engine = db.create_db_engine(settings.resolved_database_url())
    db.run_migrations(engine, MIGRATIONS_DIR, VERSION_TABLE)
    _peers_configured(settings)
    sessions = db.make_sessionmaker(engine)
    keys = SqlIdempotencyStore(sessions, tables.idempotency_keys)
    keys.clear_pending()  # requests of a stopped process: their retries run them again
    cache = settings.data_dir / "cache"
    timeout = settings.eval_peer_timeout_s
    checkpoints = GrpcCheckpoints(settings.checkpoints_address, timeout) if settings.checkpoints_address else None
    versions = GrpcDatasetVersions(settings.datasets_address, timeout)
    remote = None
    if settings.eval_ray_address:
        addr = "" if settings.eval_ray_address == "local" else settings.eval_ray_address
        remote = RayRunner(addr, num_gpus=settings.eval_ray_num_gpus)
    # evaluations log with the tenant, request and trace ids of the call that queued them
    executor = ContextThreadPoolExecutor(max_workers=settings.eval_workers, thread_name_prefix="evaluation")
    deps = Dependencies(
        repository=ObservedRepository(SqlEvaluationRepository(sessions), metrics),
        reports=StoreReportStore(store),
        datasets=StoreDatasetReader(store, versions, cache / "datasets"),
        models=StoreModelResolver(store, settings.models_dir, checkpoints, cache / "models"),
        runners=Runners(InProcessRunner(), remote),
        executor=executor,
        leases=PeerDatasetLeases(versions),
        credentials=ConfiguredTenantTokens(settings.auth_tokens.get_secret_value(),
                                           auth_disabled=settings.auth_disabled, service_name="evaluation"),
        aliases=checkpoints,
        safety=CurationSafetyScorer(),
        limits=Limits(max_samples=settings.eval_max_samples, max_new_tokens=settings.eval_max_new_tokens,
                      inline_threshold_samples=settings.eval_inline_threshold_samples),
        idempotency=Idempotency(keys),
    )
    closers = [versions.close] + ([checkpoints.close] if checkpoints else [])
    service = EvaluationService(deps)
    # Runs live in this process only: whatever an earlier process left QUEUED/RUNNING is dead
    # (failed, and its dataset leases released).
    service.fail_interrupted()
    # Hooks run in reverse: runs stop first (they use the peers and the database), then the rest.
    return service, [*closers, engine.dispose, service.shutdown]


def build_app(settings: EvaluationSettings) -> RunningServer:
    """Wire and start the evaluation service; raises a ``TuneforgeError`` when a dependency is unusable."""
    metrics = ServiceMetrics(settings.service_name)
    service, hooks = build_service(settings, metrics)
    server = build_server(settings, [(evaluation_pb2_grpc.add_EvaluationServiceServicer_to_server,
                                      EvaluationServicer(service))], [SERVICE_NAME], metrics)
    server.on_stop.extend(hooks)
    return server
