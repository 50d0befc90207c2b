"""Pieces the sync and asyncio clients share: list RPCs, long operations, request builders."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.evaluation.v1 import evaluation_pb2 as ev
from tuneforge.training.v1 import training_pb2 as tr

CHUNK = 1 << 20
OP_TERMINAL = frozenset({common_pb2.OPERATION_STATE_SUCCEEDED, common_pb2.OPERATION_STATE_FAILED,
                         common_pb2.OPERATION_STATE_CANCELLED})
JOB_TERMINAL = frozenset({tr.JOB_STATUS_SUCCEEDED, tr.JOB_STATUS_FAILED, tr.JOB_STATUS_CANCELLED})
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Lister:
    """One paginated list RPC: which service, which call, the request type and the repeated field."""

    service: str
    rpc: str
    request: type
    items: str


LISTERS: dict[str, Lister] = {
    "datasets": Lister("datasets", "ListDatasets", ds.ListDatasetsRequest, "datasets"),
    "dataset_versions": Lister("datasets", "ListDatasetVersions", ds.ListDatasetVersionsRequest, "versions"),
    "rejected_rows": Lister("datasets", "GetRejectedRows", ds.GetRejectedRowsRequest, "rows"),
    "jobs": Lister("training", "ListJobs", tr.ListJobsRequest, "jobs"),
    "job_checkpoints": Lister("training", "ListJobCheckpoints", tr.ListJobCheckpointsRequest, "checkpoints"),
    "evaluation_samples": Lister("evaluation", "ListEvaluationSamples", ev.ListEvaluationSamplesRequest, "samples"),
    "checkpoints": Lister("checkpoints", "ListCheckpoints", ck.ListCheckpointsRequest, "checkpoints"),
    "evaluations": Lister("evaluation", "ListEvaluations", ev.ListEvaluationsRequest, "evaluations"),
}


@dataclass(frozen=True)
class Operation:
    """How to follow one kind of long operation: its event stream (resumable by sequence) and getter."""

    kind: str
    service: str
    stream_rpc: str
    stream_request: Callable[[str, int], Any]
    get_rpc: str
    get_request: Callable[[str], Any]
    field: str

    def done(self, obj: Any) -> bool:
        """Whether the resource has reached a final state."""
        return obj.status in JOB_TERMINAL if self.kind == "job" else obj.state in OP_TERMINAL


OPERATIONS: dict[str, Operation] = {
    "job": Operation("job", "training", "StreamJobEvents",
                     lambda i, a: tr.StreamJobEventsRequest(job_id=i, after_sequence=a),
                     "GetJob", lambda i: tr.GetJobRequest(job_id=i), "job"),
    "evaluation": Operation("evaluation", "evaluation", "StreamEvaluationProgress",
                            lambda i, a: ev.StreamEvaluationProgressRequest(evaluation_id=i, after_sequence=a),
                            "GetEvaluation", lambda i: ev.GetEvaluationRequest(evaluation_id=i), "evaluation"),
    "curation": Operation("curation", "datasets", "WatchCurationRun",
                          lambda i, a: ds.WatchCurationRunRequest(run_id=i, after_sequence=a),
                          "GetCurationRun", lambda i: ds.GetCurationRunRequest(run_id=i), "run"),
}
_PREFIXES = {"job_": "job", "eval_": "evaluation", "run_": "curation"}


def operation_of(subject: Any, kind: str | None = None) -> tuple[Operation, str]:
    """The operation kind and id of a job/evaluation/curation run given as a message or an id."""
    if isinstance(subject, tr.Job):
        return OPERATIONS["job"], subject.id
    if isinstance(subject, ev.Evaluation):
        return OPERATIONS["evaluation"], subject.id
    if isinstance(subject, ds.CurationRun):
        return OPERATIONS["curation"], subject.id
    if isinstance(subject, str):
        found = kind or next((k for p, k in _PREFIXES.items() if subject.startswith(p)), None)
        if found:
            return OPERATIONS[found], subject
    raise TypeError(f"cannot wait for {subject!r}: pass a Job, Evaluation or CurationRun, or an id starting "
                    f"with one of {sorted(_PREFIXES)} (or kind='job'|'evaluation'|'curation')")


def list_request(lister: Lister, page_size: int, fields: Mapping[str, Any]) -> Any:
    """The first page's request."""
    req = lister.request(**{k: v for k, v in fields.items() if v is not None})
    req.page.page_size = page_size
    return req


def upload_messages(path: Path, metadata: ds.UploadMetadata, on_progress: Progress | None) -> Any:
    """The client stream of an upload: metadata, then the file in 1 MiB chunks (never read whole)."""
    total = path.stat().st_size
    yield ds.UploadDatasetRequest(metadata=metadata)
    sent = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield ds.UploadDatasetRequest(chunk=chunk)
            sent += len(chunk)
            if on_progress:
                on_progress(sent, total)


def upload_metadata(path: Path, dataset: str | None, request_id: str | None, curation: ds.IngestCuration | None,
                    fields: Mapping[str, Any]) -> ds.UploadMetadata:
    """The first message of an upload; a fresh request id unless given (gRPC retries resend it)."""
    request_id = request_id or uuid.uuid4().hex
    meta = ds.UploadMetadata(dataset_name=dataset or path.stem, file_name=path.name, request_id=request_id,
                             **fields)
    if curation is not None:
        meta.curation.CopyFrom(curation)
    return meta


def safe_target(dest: Path, relative: str) -> Path:
    """``dest/relative``, refusing paths that would escape ``dest`` (a hostile manifest)."""
    target = (dest / relative).resolve()
    if dest.resolve() not in target.parents:
        raise ValueError(f"refusing to write {relative!r} outside {dest}")
    return target


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_whole(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` through a temporary file and a rename (never half a file)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    part.write_bytes(data)
    os.replace(part, dest)


def metrics_records(data: bytes) -> list[dict[str, Any]]:
    """A metrics file's JSON lines as records."""
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
