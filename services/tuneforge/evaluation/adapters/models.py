"""Model resolution: ``ModelRef`` -> local folders, and the checkpoint service client.

Base models are either registered names (``TUNEFORGE_EVAL_MODEL_REGISTRY``: JSON ``{name: local
folder}``) or object-store artifact prefixes under the caller's tenant (downloaded once). A
checkpoint id is looked up through ``CheckpointLookup`` (the checkpoint service's ``GetManifest``):
LoRA checkpoints load their lineage's base model, then the adapter on top.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tuneforge.common.errors import InvalidInput, NotFound
from tuneforge.common.storage import tenant_prefix
from tuneforge.evaluation.adapters.objects import StoreModelFetcher
from tuneforge.evaluation.domain.model import ModelRef
from tuneforge.evaluation.domain.ports import ResolvedModel


@dataclass(frozen=True)
class CheckpointInfo:
    """What evaluation needs of a checkpoint manifest."""

    checkpoint_id: str
    job_id: str
    prefix: str  # object-store key prefix of the checkpoint folder
    is_adapter: bool
    base_model: str


class CheckpointLookup(Protocol):
    """Reads checkpoint manifests (the checkpoint service, or a test double of its API)."""

    def lookup(self, tenant: str, checkpoint_id: str) -> CheckpointInfo:
        """The checkpoint's folder, kind and lineage; ``NotFound`` when absent."""
        ...


class StoreModelResolver:
    """Implements ``ModelResolver``."""

    def __init__(self, fetcher: StoreModelFetcher, registry: Mapping[str, str],
                 checkpoints: CheckpointLookup | None) -> None:
        self._fetcher, self._registry, self._checkpoints = fetcher, dict(registry), checkpoints

    def resolve(self, tenant: str, ref: ModelRef) -> ResolvedModel:
        """Local folders for a base model or a checkpoint."""
        if ref.base_model:
            return ResolvedModel(self._base(tenant, ref.base_model, "model.base_model"))
        if self._checkpoints is None:
            raise InvalidInput.field_error(
                "model.checkpoint_id", "no checkpoint service is configured (TUNEFORGE_CHECKPOINTS_ADDRESS)"
            )
        info = self._checkpoints.lookup(tenant, ref.checkpoint_id)
        folder = self._fetcher.fetch(info.prefix)
        if not info.is_adapter:
            return ResolvedModel(folder, None, info.checkpoint_id, info.job_id)
        base = self._base(tenant, info.base_model, "model.checkpoint_id")
        return ResolvedModel(base, folder, info.checkpoint_id, info.job_id)

    def _base(self, tenant: str, name: str, field: str) -> Path:
        if name in self._registry:
            return Path(self._registry[name])
        if name.startswith(tenant_prefix(tenant)):
            return self._fetcher.fetch(name)
        raise NotFound(
            f"{field}: base model {name!r} is neither a registered model "
            f"({', '.join(sorted(self._registry)) or 'none'}) nor an artifact under {tenant_prefix(tenant)}: "
            "register it (TUNEFORGE_EVAL_MODEL_REGISTRY) or upload it first"
        )


class GrpcCheckpoints:
    """The checkpoint service's gRPC API: ``GetManifest`` (lookup) and ``SetAlias`` (best).

    Service-to-service calls authenticate with a per-tenant token
    (``TUNEFORGE_EVAL_CHECKPOINTS_TOKENS``: ``tenant:token,...``); every call has a deadline.
    """

    def __init__(self, address: str, tokens: Mapping[str, str], store_uri: str, timeout_s: float = 30.0) -> None:
        self._address, self._tokens, self._timeout = address, dict(tokens), timeout_s
        self._store_uri = store_uri.rstrip("/") + "/"

    def _stub(self, tenant: str) -> Any:
        from tuneforge.checkpoints.v1 import checkpoints_pb2_grpc
        from tuneforge.common.grpc.client import channel

        token = self._tokens.get(tenant)
        if token is None:
            raise InvalidInput.field_error(
                "model.checkpoint_id", f"no checkpoint-service token for tenant {tenant!r}: add it to "
                "TUNEFORGE_EVAL_CHECKPOINTS_TOKENS"
            )
        return checkpoints_pb2_grpc.CheckpointServiceStub(channel(self._address, token, default_timeout=self._timeout))

    def lookup(self, tenant: str, checkpoint_id: str) -> CheckpointInfo:
        """``GetManifest`` -> ``CheckpointInfo``."""
        from tuneforge.checkpoints.v1 import checkpoints_pb2

        m = self._stub(tenant).GetManifest(checkpoints_pb2.GetManifestRequest(checkpoint=checkpoint_id),
                                            timeout=self._timeout).manifest
        prefix = m.uri[len(self._store_uri):] if m.uri.startswith(self._store_uri) else m.uri
        is_adapter = m.kind != checkpoints_pb2.CHECKPOINT_KIND_FULL
        return CheckpointInfo(m.checkpoint_id, m.lineage.job_id, prefix, is_adapter, m.lineage.base_model)

    def set_alias(self, tenant: str, job_id: str, alias: str, checkpoint_id: str) -> None:
        """``SetAlias``."""
        from tuneforge.checkpoints.v1 import checkpoints_pb2

        self._stub(tenant).SetAlias(
            checkpoints_pb2.SetAliasRequest(job_id=job_id, alias=alias, checkpoint_id=checkpoint_id),
            timeout=self._timeout,
        )
