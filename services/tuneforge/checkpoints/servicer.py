"""CheckpointService over gRPC: thin shell, proto -> domain -> proto (errors mapped by the interceptor)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tuneforge.checkpoints import convert
from tuneforge.checkpoints.adapters.objects import folder_key
from tuneforge.checkpoints.domain.model import Manifest
from tuneforge.checkpoints.domain.service import CheckpointRegistry
from tuneforge.checkpoints.v1 import checkpoints_pb2 as pb
from tuneforge.checkpoints.v1 import checkpoints_pb2_grpc as pb_grpc
from tuneforge.common.auth import current_identity
from tuneforge.common.idempotency import Idempotency, digest_of, proto_digest
from tuneforge.common.paging import paginate


def _tenant() -> str:
    return current_identity().tenant


class CheckpointServicer(pb_grpc.CheckpointServiceServicer):
    """Every RPC acts as the caller's tenant (from the bearer token).

    Args:
        registry: the checkpoint use cases.
        store_uri: the object store URI shown in manifests (no credentials in it).
        chunk_size: bytes per DownloadFile message.
    """

    def __init__(self, registry: CheckpointRegistry, store_uri: str, chunk_size: int = 1 << 20,
                 idempotency: Idempotency | None = None) -> None:
        self._registry = registry
        self._store_uri = store_uri
        self._chunk = chunk_size
        self._idem = idempotency

    def _pb(self, m: Manifest) -> pb.Manifest:
        return convert.manifest_to_pb(m, self._store_uri, folder_key(m.tenant, m.draft.prefix))

    def RegisterCheckpoint(self, request: pb.RegisterCheckpointRequest, context: Any) -> pb.RegisterCheckpointResponse:
        """Checks the uploaded files and commits the manifest (idempotent)."""
        result = self._registry.register(_tenant(), convert.draft_from_pb(request))
        return pb.RegisterCheckpointResponse(manifest=self._pb(result.manifest),
                                             retention_deleted=list(result.retention_deleted))

    def ListCheckpoints(self, request: pb.ListCheckpointsRequest, context: Any) -> pb.ListCheckpointsResponse:
        """Lists a job's committed checkpoints by step or metric, paginated."""
        items = self._registry.list(_tenant(), request.job_id, convert.ORDER_FROM_PB.get(request.order,
                                    convert.ORDER_FROM_PB[0]), request.metric, request.greater_is_better)
        page, token = paginate(items, request.page.page_size, request.page.page_token)
        return pb.ListCheckpointsResponse(checkpoints=[self._pb(m) for m in page], next_page_token=token)

    def GetManifest(self, request: pb.GetManifestRequest, context: Any) -> pb.GetManifestResponse:
        """Returns a manifest by id or ``job@alias``."""
        return pb.GetManifestResponse(manifest=self._pb(self._registry.get(_tenant(), request.checkpoint)))

    def SetAlias(self, request: pb.SetAliasRequest, context: Any) -> pb.SetAliasResponse:
        """Moves a user alias, or ``best``, atomically (``latest`` is refused)."""
        alias = self._registry.set_alias(_tenant(), request.job_id, request.alias, request.checkpoint_id)
        return pb.SetAliasResponse(alias=convert.alias_to_pb(alias))

    def ListAliases(self, request: pb.ListAliasesRequest, context: Any) -> pb.ListAliasesResponse:
        """Lists a job's aliases with history."""
        aliases = self._registry.list_aliases(_tenant(), request.job_id)
        return pb.ListAliasesResponse(aliases=[convert.alias_to_pb(a) for a in aliases])

    def DeleteCheckpoint(self, request: pb.DeleteCheckpointRequest, context: Any) -> pb.DeleteCheckpointResponse:
        """Deletes a checkpoint (refused when referenced unless forced)."""
        self._registry.delete(_tenant(), request.checkpoint_id, force=request.force)
        return pb.DeleteCheckpointResponse()

    def DownloadFile(self, request: pb.DownloadFileRequest, context: Any) -> Iterator[pb.DownloadFileResponse]:
        """Streams one verified file from ``offset``; the last message carries the sha256."""
        manifest = self._registry.get(_tenant(), request.checkpoint_id)
        entry = manifest.file(request.path)
        chunks = self._registry.read_file(_tenant(), request.checkpoint_id, request.path,
                                          request.offset, self._chunk)
        offset = request.offset
        for chunk in chunks:
            last = offset + len(chunk) == entry.size
            yield pb.DownloadFileResponse(offset=offset, data=chunk, sha256=entry.sha256 if last else "")
            offset += len(chunk)
        if offset == entry.size == request.offset:  # empty remainder: still confirm the checksum
            yield pb.DownloadFileResponse(offset=offset, data=b"", sha256=entry.sha256)

    def GetDownloadUrl(self, request: pb.GetDownloadUrlRequest, context: Any) -> pb.GetDownloadUrlResponse:
        """Presigns a GET of one file."""
        url, expire_time = self._registry.download_url(_tenant(), request.checkpoint_id, request.path,
                                                       request.expires_in_seconds)
        return pb.GetDownloadUrlResponse(url=url, expire_time=convert.timestamp(expire_time))

    def ExportCheckpoint(self, request: pb.ExportCheckpointRequest, context: Any) -> pb.ExportCheckpointResponse:
        """Exports as merged / adapter / full safetensors folder.

        The destination is the export's idempotency key: concurrent identical requests wait for the
        first and get its export; another checkpoint or format there is ALREADY_EXISTS.
        """
        tenant, fmt = _tenant(), convert.export_format(request.format)

        def export() -> Any:  # a repeat returns the committed export at once
            return self._registry.export(tenant, request.checkpoint, fmt, request.destination)
        if self._idem is None:
            return convert.export_to_pb(export())
        destination = request.destination.strip("/") or f"{request.checkpoint}/{fmt.value}"
        key = destination if len(destination) <= 200 else digest_of(destination)
        result = self._idem.run(tenant, "ExportCheckpoint", key, proto_digest(request, "destination"),
                                create=lambda: (export(), key)[1], load=lambda _key: export(),
                                key_field="destination")
        return convert.export_to_pb(result)

    def SetRetentionPolicy(self, request: pb.SetRetentionPolicyRequest,
                           context: Any) -> pb.SetRetentionPolicyResponse:
        """Stores and applies a retention policy."""
        policy = convert.policy_from_pb(request.policy)
        plan = self._registry.set_policy(_tenant(), request.job_id, policy)
        return pb.SetRetentionPolicyResponse(policy=convert.policy_to_pb(policy), deleted=list(plan.delete))

    def ApplyRetention(self, request: pb.ApplyRetentionRequest, context: Any) -> pb.ApplyRetentionResponse:
        """Applies the job's policy now."""
        plan = self._registry.apply_retention(_tenant(), request.job_id)
        return pb.ApplyRetentionResponse(deleted=list(plan.delete), kept=list(plan.keep))

    def PinCheckpoint(self, request: pb.PinCheckpointRequest, context: Any) -> pb.PinCheckpointResponse:
        """Pins a checkpoint for a holder."""
        self._registry.pin(_tenant(), request.checkpoint_id, request.holder)
        return pb.PinCheckpointResponse()

    def UnpinCheckpoint(self, request: pb.UnpinCheckpointRequest, context: Any) -> pb.UnpinCheckpointResponse:
        """Releases a pin."""
        return pb.UnpinCheckpointResponse(
            released=self._registry.unpin(_tenant(), request.checkpoint_id, request.holder))

    def GetLatestCompleteCheckpoint(self, request: pb.GetLatestCompleteCheckpointRequest,
                                    context: Any) -> pb.GetLatestCompleteCheckpointResponse:
        """The newest verified checkpoint of a job (resume source)."""
        found = self._registry.latest_complete_checkpoint(_tenant(), request.job_id, deep=not request.shallow)
        if found is None:
            return pb.GetLatestCompleteCheckpointResponse(found=False)
        return pb.GetLatestCompleteCheckpointResponse(found=True, manifest=self._pb(found))
