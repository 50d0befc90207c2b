"""The SDK behind ``tuneforge.client.Client``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tuneforge.checkpoints.v1 import checkpoints_pb2_grpc
from tuneforge.common.grpc.client import channel
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.datasets.v1 import datasets_pb2_grpc
from tuneforge.evaluation.v1 import evaluation_pb2 as ev
from tuneforge.evaluation.v1 import evaluation_pb2_grpc
from tuneforge.training.v1 import training_pb2 as tr
from tuneforge.training.v1 import training_pb2_grpc

CHUNK = 1 << 20
TERMINAL = {common_pb2.OPERATION_STATE_SUCCEEDED, common_pb2.OPERATION_STATE_FAILED,
            common_pb2.OPERATION_STATE_CANCELLED}
JOB_TERMINAL = {tr.JOB_STATUS_SUCCEEDED, tr.JOB_STATUS_FAILED, tr.JOB_STATUS_CANCELLED}


@dataclass
class Client:
    """Stubs for every service, sharing one token; each call has a deadline (default 60 s)."""

    datasets: datasets_pb2_grpc.DatasetServiceStub
    training: training_pb2_grpc.TrainingServiceStub
    evaluation: evaluation_pb2_grpc.EvaluationServiceStub
    checkpoints: checkpoints_pb2_grpc.CheckpointServiceStub
    _channels: Sequence[grpc.Channel] = ()

    @classmethod
    def connect(cls, addresses: dict[str, str], token: str, timeout: float = 60.0) -> Client:
        """Connect to ``{"datasets": host:port, "training": ..., "evaluation": ..., "checkpoints": ...}``."""
        chans = {name: channel(addr, token, default_timeout=timeout) for name, addr in addresses.items()}
        return cls(datasets_pb2_grpc.DatasetServiceStub(chans["datasets"]),
                   training_pb2_grpc.TrainingServiceStub(chans["training"]),
                   evaluation_pb2_grpc.EvaluationServiceStub(chans["evaluation"]),
                   checkpoints_pb2_grpc.CheckpointServiceStub(chans["checkpoints"]), list(chans.values()))

    @classmethod
    def local(cls, run_dir: Path = Path(".run"), base_port: int = 50051) -> Client:
        """The `make up` stack on 127.0.0.1."""
        names = ("datasets", "training", "evaluation", "checkpoints")
        token = (run_dir / "token").read_text().strip()
        return cls.connect({n: f"127.0.0.1:{base_port + i}" for i, n in enumerate(names)}, token)

    def close(self) -> None:
        """Close every channel."""
        for ch in self._channels:
            ch.close()

    def upload_dataset(self, name: str, path: Path, **metadata: Any) -> ds.UploadDatasetResponse:
        """Stream a local file to DatasetService.UploadDataset (never reading it whole)."""
        def messages() -> Iterator[ds.UploadDatasetRequest]:
            yield ds.UploadDatasetRequest(metadata=ds.UploadMetadata(dataset_name=name, file_name=path.name,
                                                                     **metadata))
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    yield ds.UploadDatasetRequest(chunk=chunk)
        return self.datasets.UploadDataset(messages(), timeout=600)

    def wait_curation(self, run_id: str, timeout: float = 3600) -> ds.CurationRun:
        """Follow a curation run's events until it ends; return the final run."""
        for event in self.datasets.WatchCurationRun(ds.WatchCurationRunRequest(run_id=run_id), timeout=timeout):
            if event.state in TERMINAL:
                break
        return self.datasets.GetCurationRun(ds.GetCurationRunRequest(run_id=run_id)).run

    def wait_evaluation(self, evaluation_id: str, timeout: float = 3600) -> ev.Evaluation:
        """Follow an evaluation's progress until it ends; return the final evaluation."""
        req = ev.StreamEvaluationProgressRequest(evaluation_id=evaluation_id)
        for event in self.evaluation.StreamEvaluationProgress(req, timeout=timeout):
            if event.state in TERMINAL:
                break
        return self.evaluation.GetEvaluation(ev.GetEvaluationRequest(evaluation_id=evaluation_id)).evaluation

    def wait_job(self, job_id: str, on_event: Callable[[tr.JobEvent], None] | None = None,
                 timeout: float = 24 * 3600) -> tr.Job:
        """Follow a training job's events until it ends (re-attaching from the last sequence when
        the stream drops, e.g. while the service restarts); return the final job."""
        after, deadline = 0, time.monotonic() + timeout
        while time.monotonic() < deadline:
            request = tr.StreamJobEventsRequest(job_id=job_id, after_sequence=after)
            try:
                for event in self.training.StreamJobEvents(request, timeout=deadline - time.monotonic()):
                    after = event.sequence
                    if on_event:
                        on_event(event)
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise
                time.sleep(1.0)
                continue
            job = self.training.GetJob(tr.GetJobRequest(job_id=job_id)).job
            if job.status in JOB_TERMINAL:
                return job
        return self.training.GetJob(tr.GetJobRequest(job_id=job_id)).job
