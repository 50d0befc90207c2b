"""Proto <-> domain conversion for the dataset service (no business logic)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from tuneforge.common.errors import InvalidInput
from tuneforge.common.grpc.timestamps import timestamp
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.domain import config as cfg
from tuneforge.datasets.domain.formats import DatasetFormat
from tuneforge.datasets.domain.ingest import IngestOptions, ValidationPolicy
from tuneforge.datasets.domain.model import Dataset, Run, RunState, Version
from tuneforge.datasets.domain.readers import FileType
from tuneforge.datasets.domain.runs import RunEvent
from tuneforge.datasets.v1 import datasets_pb2 as pb

FORMAT_FROM_PB = {pb.DATASET_FORMAT_ALPACA: DatasetFormat.ALPACA, pb.DATASET_FORMAT_DOLLY: DatasetFormat.DOLLY,
                  pb.DATASET_FORMAT_CHAT: DatasetFormat.CHAT, pb.DATASET_FORMAT_SHAREGPT: DatasetFormat.SHAREGPT,
                  pb.DATASET_FORMAT_PREFERENCE: DatasetFormat.PREFERENCE,
                  pb.DATASET_FORMAT_OPENAI_DPO: DatasetFormat.OPENAI_DPO, pb.DATASET_FORMAT_TEXT: DatasetFormat.TEXT,
                  pb.DATASET_FORMAT_KTO: DatasetFormat.KTO}
FORMAT_FROM_PB[pb.DATASET_FORMAT_PROMPT] = DatasetFormat.PROMPT
FORMAT_TO_PB = {v: k for k, v in FORMAT_FROM_PB.items()}
FILE_TYPE_FROM_PB = {pb.FILE_TYPE_JSONL: FileType.JSONL, pb.FILE_TYPE_JSON: FileType.JSON,
                     pb.FILE_TYPE_CSV: FileType.CSV, pb.FILE_TYPE_PARQUET: FileType.PARQUET}
KIND_TO_PB = {"chat": pb.RECORD_KIND_CHAT, "instruction": pb.RECORD_KIND_CHAT,
              "preference": pb.RECORD_KIND_PREFERENCE, "text": pb.RECORD_KIND_TEXT,
              "labelled": pb.RECORD_KIND_LABELLED}
KIND_TO_PB["prompt"] = pb.RECORD_KIND_PROMPT
STATE_TO_PB = {RunState.QUEUED: common_pb2.OPERATION_STATE_QUEUED, RunState.RUNNING: common_pb2.OPERATION_STATE_RUNNING,
               RunState.SUCCEEDED: common_pb2.OPERATION_STATE_SUCCEEDED, RunState.FAILED: common_pb2.OPERATION_STATE_FAILED}


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    """A JSON-like dict as a Struct."""
    out = struct_pb2.Struct()
    out.update(value)
    return out


def ingest_options(file_name: str, fmt: int, file_type: int, policy: int, max_tokens: int, category_field: str) -> IngestOptions:
    """Upload or register fields as ingest options."""
    if max_tokens < 0:
        raise InvalidInput.field_error("max_tokens_per_row", "is negative: use 0 for no limit")
    return IngestOptions(
        file_name=file_name or "upload",
        format=FORMAT_FROM_PB.get(fmt),
        file_type=FILE_TYPE_FROM_PB.get(file_type),
        policy=ValidationPolicy.SKIP_INVALID if policy == pb.VALIDATION_POLICY_SKIP_INVALID else ValidationPolicy.REJECT_UPLOAD,
        max_tokens_per_row=max_tokens,
        category_field=category_field,
    )


def dataset_to_pb(d: Dataset) -> pb.Dataset:
    """Domain dataset -> proto."""
    return pb.Dataset(id=d.id, name=d.name, description=d.description, kind=KIND_TO_PB.get(d.kind, 0),
                      latest_version_id=d.latest_version_id, create_time=timestamp(d.created_at), labels=d.labels)


def step_to_pb(step: dict[str, Any]) -> pb.StepCount:
    """A step count document -> proto."""
    return pb.StepCount(step=step["step"], rows_in=step["rows_in"], rows_out=step["rows_out"],
                        rows_modified=step.get("rows_modified", 0), details=struct(step.get("details") or {}))


def version_to_pb(v: Version, uri: str) -> pb.DatasetVersion:
    """Domain version -> proto."""
    doc = v.document
    return pb.DatasetVersion(id=v.id, dataset_id=v.dataset_id, content_hash=v.content_hash,
                             parent_version_id=v.parent_version_id, row_count=v.row_count,
                             split_counts=doc.get("split_counts", {}), pipeline=struct(doc.get("pipeline") or {}),
                             steps=[step_to_pb(s) for s in doc.get("steps", [])], uri=uri,
                             kind=KIND_TO_PB.get(v.kind, 0), create_time=timestamp(v.created_at))


def validation_to_pb(v: Version) -> pb.ValidationSummary:
    """The ingest summary of a raw version."""
    s = v.document.get("validation", {})
    return pb.ValidationSummary(rows_read=s.get("rows_read", 0), rows_accepted=s.get("rows_accepted", 0),
                                rows_rejected=s.get("rows_rejected", 0),
                                format=FORMAT_TO_PB.get(DatasetFormat(s["format"]), 0) if s.get("format") else 0)


def run_to_pb(r: Run) -> pb.CurationRun:
    """Domain run -> proto."""
    error = r.document.get("error")
    return pb.CurationRun(id=r.id, input_version_id=r.input_version_id, state=STATE_TO_PB[r.state],
                          steps=[step_to_pb(s) for s in r.document.get("steps", [])],
                          output_version_id=r.output_version_id,
                          error=common_pb2.ErrorInfo(**error) if error else None,
                          create_time=timestamp(r.created_at), end_time=timestamp(r.ended_at))


def event_to_pb(e: RunEvent) -> pb.CurationEvent:
    """A run event -> proto."""
    return pb.CurationEvent(sequence=e.sequence, time=timestamp(e.time), state=STATE_TO_PB[e.state],
                            step=step_to_pb(e.step) if e.step else None, message=e.message)


def _step_from_pb(step: pb.CurationStep, i: int) -> cfg.StepConfig:
    which = step.WhichOneof("step")
    m = getattr(step, which) if which else None
    if which == "normalize":
        return cfg.Normalize(collapse_whitespace=m.collapse_whitespace)
    if which == "exact_dedup":
        return cfg.ExactDedup(ignore_case=m.ignore_case)
    if which == "near_dedup":
        return cfg.NearDedup(m.threshold or 0.8, m.ngram_size or 5, m.num_perm or 128)
    if which == "length_filter":
        return cfg.LengthFilter(m.min_chars, m.max_chars, m.min_tokens, m.max_tokens, m.tokenizer)
    if which == "quality_filter":
        return cfg.QualityFilter(m.max_repetition or 0.3, m.max_symbol_ratio or 0.3, m.min_answer_words or 1)
    if which == "pii":
        action = cfg.PiiAction.DROP if m.action == pb.PII_ACTION_DROP else cfg.PiiAction.REDACT
        return cfg.Pii(action, tuple(m.kinds))
    if which == "toxicity":
        action = cfg.ScreenAction.DROP if m.action == pb.SCREEN_ACTION_DROP else cfg.ScreenAction.FLAG
        return cfg.Toxicity(m.threshold or 0.5, action)
    if which == "language":
        return cfg.Language(tuple(m.keep), m.min_confidence or 0.5)
    if which == "balance":
        return cfg.Balance(m.cap_per_category, tuple(sorted(m.target_mix.items())), m.seed)
    if which == "decontaminate":
        return cfg.Decontaminate(tuple(m.eval_version_ids), m.ngram_size or 13)
    if which == "augment":
        return cfg.Augment(m.instruction_variants, m.synonym_probability, m.seed)
    if which == "generative_augment":
        return cfg.GenerativeAugment(
            model=m.model, paraphrases=m.paraphrases, back_translation_languages=tuple(m.back_translation_languages),
            fraction=m.fraction if m.HasField("fraction") else 1.0, max_new_tokens=m.max_new_tokens or 128,
            temperature=m.temperature, seed=m.seed, batch_size=m.batch_size or 8,
            source_language=m.source_language or "en")
    raise InvalidInput.field_error(f"steps[{i}]", "sets no step: choose one of normalize, exact_dedup, ...")


def pipeline_from_pb(request: pb.CurateDatasetRequest | pb.IngestCuration) -> cfg.PipelineConfig:
    """CurateDatasetRequest (or an upload's IngestCuration) -> pipeline configuration (defaults applied)."""
    split = None
    if request.HasField("split"):
        s = request.split
        split = cfg.SplitConfig(s.validation_ratio, s.test_ratio, s.seed, s.stratify)
    steps = tuple(_step_from_pb(s, i) for i, s in enumerate(request.steps))
    return cfg.PipelineConfig(steps, split, request.max_removal_fraction or 0.5)


def ingest_curation_from_pb(message: Any, field: str) -> cfg.PipelineConfig | None:
    """The optional ``curation`` of an upload or registration (None when unset)."""
    if not message.HasField(field):
        return None
    curation = getattr(message, field)
    if not curation.steps and not curation.HasField("split"):
        raise InvalidInput.field_error(f"{field}.steps", "is empty: give at least one step or a split, or leave curation unset")
    return pipeline_from_pb(curation)


def row_to_struct(record: dict[str, Any]) -> struct_pb2.Struct:
    """A canonical record -> Struct (nulls kept as null)."""
    return json_format.ParseDict(record, struct_pb2.Struct())
