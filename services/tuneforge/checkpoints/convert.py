"""Proto <-> domain conversions for the checkpoint service (transport side: imports protobuf)."""

from __future__ import annotations

from google.protobuf import json_format, struct_pb2

from tuneforge.checkpoints.domain.model import (
    Alias,
    CheckpointDraft,
    CheckpointKind,
    CheckpointOrder,
    ExportFormat,
    FileEntry,
    Lineage,
    Manifest,
    ModelHead,
    RetentionPolicy,
)
from tuneforge.checkpoints.domain.ports import ExportResult
from tuneforge.checkpoints.v1 import checkpoints_pb2 as pb
from tuneforge.common.errors import InvalidInput
from tuneforge.common.grpc.timestamps import timestamp

KIND_FROM_PB = {pb.CHECKPOINT_KIND_FULL: CheckpointKind.FULL, pb.CHECKPOINT_KIND_LORA: CheckpointKind.LORA,
                pb.CHECKPOINT_KIND_PREFIX: CheckpointKind.PREFIX}
KIND_TO_PB = {v: k for k, v in KIND_FROM_PB.items()}
FORMAT_FROM_PB = {pb.EXPORT_FORMAT_MERGED: ExportFormat.MERGED, pb.EXPORT_FORMAT_ADAPTER: ExportFormat.ADAPTER,
                  pb.EXPORT_FORMAT_FULL: ExportFormat.FULL}
HEAD_TO_PB = {ModelHead.UNSPECIFIED: pb.MODEL_HEAD_UNSPECIFIED, ModelHead.CAUSAL_LM: pb.MODEL_HEAD_CAUSAL_LM,
              ModelHead.REWARD_MODEL: pb.MODEL_HEAD_REWARD_MODEL}
ORDER_FROM_PB = {pb.CHECKPOINT_ORDER_UNSPECIFIED: CheckpointOrder.STEP, pb.CHECKPOINT_ORDER_STEP: CheckpointOrder.STEP,
                 pb.CHECKPOINT_ORDER_METRIC: CheckpointOrder.METRIC}


def _enum(table: dict, value: int, field: str) -> object:  # type: ignore[type-arg]
    if value not in table:
        raise InvalidInput.field_error(field, f"value {value} is unset or unknown: choose one of the enum values")
    return table[value]


def files_to_pb(files: tuple[FileEntry, ...]) -> list[pb.FileEntry]:
    return [pb.FileEntry(path=f.path, size=f.size, sha256=f.sha256) for f in files]


def draft_from_pb(req: pb.RegisterCheckpointRequest) -> CheckpointDraft:
    """The registration request as a domain draft."""
    lin = req.lineage
    return CheckpointDraft(
        job_id=req.job_id,
        step=req.step,
        kind=_enum(KIND_FROM_PB, req.kind, "kind"),  # type: ignore[arg-type]
        prefix=req.prefix,
        files=tuple(FileEntry(f.path, f.size, f.sha256.lower()) for f in req.files),
        metrics=dict(req.metrics),
        config=json_format.MessageToDict(req.config),
        lineage=Lineage(job_id=lin.job_id or req.job_id, dataset_version_id=lin.dataset_version_id,
                        base_model=lin.base_model, parent_checkpoint_id=lin.parent_checkpoint_id,
                        tuneforge_version=lin.tuneforge_version),
    )


def manifest_to_pb(m: Manifest, store_uri: str, folder: str) -> pb.Manifest:
    """A committed manifest on the wire; ``uri`` is the store URI of the checkpoint folder."""
    d = m.draft
    config = struct_pb2.Struct()
    config.update(dict(d.config))
    base, sep, query = store_uri.partition("?")
    return pb.Manifest(
        checkpoint_id=m.checkpoint_id, kind=KIND_TO_PB[d.kind], step=d.step, metrics=dict(d.metrics),
        files=files_to_pb(d.files), config=config,
        lineage=pb.Lineage(**vars(d.lineage)),
        uri=f"{base.rstrip('/')}/{folder}{sep}{query}", create_time=timestamp(m.create_time),
        aliases=list(m.aliases), head=HEAD_TO_PB[m.head],
    )


def alias_to_pb(a: Alias) -> pb.Alias:
    return pb.Alias(name=a.name, checkpoint_id=a.checkpoint_id,
                    history=[pb.AliasMove(checkpoint_id=h.checkpoint_id, time=timestamp(h.time))
                             for h in a.history])


def policy_from_pb(p: pb.RetentionPolicy) -> RetentionPolicy:
    return RetentionPolicy(keep_best_n=p.keep_best_n, keep_latest_m=p.keep_latest_m,
                           metric=p.metric or "eval_loss", greater_is_better=p.greater_is_better)


def policy_to_pb(p: RetentionPolicy) -> pb.RetentionPolicy:
    return pb.RetentionPolicy(keep_best_n=p.keep_best_n, keep_latest_m=p.keep_latest_m, metric=p.metric,
                              greater_is_better=p.greater_is_better)


def export_format(value: int) -> ExportFormat:
    return _enum(FORMAT_FROM_PB, value, "format")  # type: ignore[return-value]


def export_to_pb(result: ExportResult) -> pb.ExportCheckpointResponse:
    return pb.ExportCheckpointResponse(uri=result.uri, files=files_to_pb(result.files))
