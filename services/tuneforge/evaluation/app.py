"""Composition root of the evaluation service: settings -> adapters -> domain -> servicer -> server.

Fails fast at start-up: the object store must be reachable and writable (the store probes it),
the database is migrated before the port opens, and the model registry's folders must exist.
Evaluations run on a small background pool; their engine tasks run in-process, or on Ray when
``TUNEFORGE_EVAL_RAY_ADDRESS`` is set and a job is larger than ``eval_inline_threshold_samples``.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from tuneforge.common import db
from tuneforge.common.errors import InvalidInput
from tuneforge.common.grpc.server import RunningServer, build_server
from tuneforge.common.settings import ServiceSettings
from tuneforge.common.storage import open_object_store
from tuneforge.evaluation.adapters.models import CheckpointLookup, GrpcCheckpoints, StoreModelResolver
from tuneforge.evaluation.adapters.objects import (
    StoreDatasetReader,
    StoreModelFetcher,
    StoreReportStore,
    convention_locator,
)
from tuneforge.evaluation.adapters.runners import InProcessRunner, RayRunner
from tuneforge.evaluation.adapters.safety import CurationSafetyScorer
from tuneforge.evaluation.adapters.sql import SqlEvaluationRepository
from tuneforge.evaluation.domain.model import Limits
from tuneforge.evaluation.domain.ports import CheckpointAliases
from tuneforge.evaluation.domain.service import Dependencies, EvaluationService, Runners
from tuneforge.evaluation.servicer import EvaluationServicer
from tuneforge.evaluation.v1 import evaluation_pb2, evaluation_pb2_grpc

SERVICE_NAME = evaluation_pb2.DESCRIPTOR.services_by_name["EvaluationService"].full_name
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = db.version_table_for("evaluation")


class EvaluationSettings(ServiceSettings):
    """Evaluation service settings (``TUNEFORGE_*``)."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="forbid", validate_default=True)
    service_name: str = "evaluation"
    eval_model_registry: str = Field("{}", description='JSON {"name": "/local/hf/folder"} of base models.')
    eval_dataset_prefix_template: str = Field(
        "tenants/{tenant}/datasets/versions/{version_id}/",
        description="Object-store prefix of a dataset version artifact (MANIFEST.json + Parquet shards).",
    )
    eval_checkpoints_address: str = Field("", description="host:port of the checkpoint service ('' = none).")
    eval_checkpoints_tokens: SecretStr = Field(SecretStr(""), description="tenant:token,... for the checkpoint service.")
    eval_ray_address: str = Field("", description="Ray address for large jobs ('' = in-process only; 'local' = start one).")
    eval_ray_num_gpus: float = Field(0, ge=0, description="GPUs per Ray evaluation task (0 on CPU clusters).")
    eval_max_samples: int = Field(1000, ge=1, description="Cap on examples per dataset.")
    eval_max_new_tokens: int = Field(512, ge=1, description="Cap on generated tokens per example.")
    eval_inline_threshold_samples: int = Field(200, ge=0, description="Jobs up to this many examples run in-process.")
    eval_workers: int = Field(2, ge=1, le=64, description="Evaluations run at the same time.")


def _parse_tokens(spec: str) -> dict[str, str]:
    pairs = [p.strip() for p in spec.split(",") if p.strip()]
    out = {}
    for p in pairs:
        tenant, _, token = p.partition(":")
        if not token:
            raise InvalidInput.field_error("TUNEFORGE_EVAL_CHECKPOINTS_TOKENS", "expected tenant:token,...")
        out[tenant] = token
    return out


def _registry(settings: EvaluationSettings) -> dict[str, str]:
    try:
        registry = json.loads(settings.eval_model_registry)
    except json.JSONDecodeError as exc:
        raise InvalidInput.field_error("TUNEFORGE_EVAL_MODEL_REGISTRY", f"not JSON: {exc.msg}") from None
    missing = [n for n, p in registry.items() if not (Path(p) / "config.json").is_file()]
    if missing:
        raise InvalidInput.field_error(
            "TUNEFORGE_EVAL_MODEL_REGISTRY", f"models {missing} have no config.json at their folder: fix the paths"
        )
    return registry


def build_service(settings: EvaluationSettings, *, checkpoints: CheckpointLookup | None = None,
                  aliases: CheckpointAliases | None = None) -> tuple[EvaluationService, list]:
    """Wire the domain service; ``checkpoints``/``aliases`` override the gRPC client (tests, embedding)."""
    store = open_object_store(settings.resolved_object_store_uri(),
                              access_key=settings.s3_access_key.get_secret_value() or None,
                              secret_key=settings.s3_secret_key.get_secret_value() or None)
    engine = db.create_db_engine(settings.resolved_database_url())
    db.run_migrations(engine, MIGRATIONS_DIR, VERSION_TABLE)
    cache = settings.data_dir / "cache"
    if settings.eval_checkpoints_address and checkpoints is None:
        client = GrpcCheckpoints(settings.eval_checkpoints_address,
                                 _parse_tokens(settings.eval_checkpoints_tokens.get_secret_value()), store.uri)
        checkpoints, aliases = client, aliases or client
    remote = None
    if settings.eval_ray_address:
        addr = "" if settings.eval_ray_address == "local" else settings.eval_ray_address
        remote = RayRunner(addr, num_gpus=settings.eval_ray_num_gpus)
    executor = ThreadPoolExecutor(max_workers=settings.eval_workers, thread_name_prefix="evaluation")
    deps = Dependencies(
        repository=SqlEvaluationRepository(db.make_sessionmaker(engine)),
        reports=StoreReportStore(store),
        datasets=StoreDatasetReader(store, convention_locator(settings.eval_dataset_prefix_template), cache / "datasets"),
        models=StoreModelResolver(StoreModelFetcher(store, cache / "models"), _registry(settings), checkpoints),
        runners=Runners(InProcessRunner(), remote),
        executor=executor,
        aliases=aliases,
        safety=CurationSafetyScorer(),
        limits=Limits(max_samples=settings.eval_max_samples, max_new_tokens=settings.eval_max_new_tokens,
                      inline_threshold_samples=settings.eval_inline_threshold_samples),
    )
    return EvaluationService(deps), [engine.dispose, lambda: executor.shutdown(wait=False, cancel_futures=True)]


def build_app(settings: EvaluationSettings, *, checkpoints: CheckpointLookup | None = None,
              aliases: CheckpointAliases | None = None) -> RunningServer:
    """Wire and start the evaluation service; raises a ``TuneforgeError`` when a dependency is unusable."""
    service, hooks = build_service(settings, checkpoints=checkpoints, aliases=aliases)
    server = build_server(settings, [(evaluation_pb2_grpc.add_EvaluationServiceServicer_to_server,
                                      EvaluationServicer(service))], [SERVICE_NAME])
    server.on_stop.extend(hooks)
    return server
