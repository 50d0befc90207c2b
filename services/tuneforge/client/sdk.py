"""The synchronous SDK: ``tuneforge.client.Client``. The asyncio twin is ``tuneforge.client.aio``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck
from tuneforge.checkpoints.v1 import checkpoints_pb2_grpc
from tuneforge.client import _shared, jobspec
from tuneforge.client._transport import Service, open_channel
from tuneforge.client.config import SERVICES, ClientConfig
from tuneforge.client.errors import Cancelled, DataLoss, DeadlineExceeded, Unavailable
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.datasets.v1 import datasets_pb2_grpc
from tuneforge.evaluation.v1 import evaluation_pb2 as ev
from tuneforge.evaluation.v1 import evaluation_pb2_grpc
from tuneforge.training.v1 import training_pb2 as tr
from tuneforge.training.v1 import training_pb2_grpc

STUBS = {"datasets": datasets_pb2_grpc.DatasetServiceStub, "training": training_pb2_grpc.TrainingServiceStub,
         "evaluation": evaluation_pb2_grpc.EvaluationServiceStub,
         "checkpoints": checkpoints_pb2_grpc.CheckpointServiceStub}
# A dropped event stream is re-attached after this pause (doubling, capped) - not a retry policy
# for calls, which gRPC's service config owns, but the cadence of re-opening a finished stream.
_REATTACH_PAUSE_S = (0.2, 5.0)


class Client:
    """The four services behind one object. Every call carries the token and a deadline, retries
    UNAVAILABLE with backoff when it is safe, and raises :mod:`tuneforge.client.errors` types.

    ``client.datasets`` / ``.training`` / ``.evaluation`` / ``.checkpoints`` take the generated
    request messages (``tuneforge.<service>.v1.<service>_pb2``) for every RPC; the methods below
    cover what needs more than one call.
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._channels = {svc: open_channel(config.addresses[svc], config) for svc in SERVICES}
        services = {svc: Service(STUBS[svc](ch), config.token, config.timeout_s) for svc, ch in self._channels.items()}
        self.datasets, self.training = services["datasets"], services["training"]
        self.evaluation, self.checkpoints = services["evaluation"], services["checkpoints"]

    # -- connecting -----------------------------------------------------------------------------

    @classmethod
    def connect(cls, addresses: Mapping[str, str] | str | None = None, token: str | None = None, *,
                timeout: float | None = None, tls: bool | None = None, profile: str | None = None,
                **config: Any) -> Client:
        """Connect from explicit values, the environment and the profile file (see
        :mod:`tuneforge.client.config`). ``addresses`` is one ``host:port`` for every service or
        a mapping ``{"datasets": ..., "training": ..., "evaluation": ..., "checkpoints": ...}``."""
        one = addresses if isinstance(addresses, str) else None
        many = addresses if isinstance(addresses, Mapping) else None
        return cls(ClientConfig.load(address=one, addresses=many, token=token, timeout_s=timeout, tls=tls,
                                     profile=profile, **config))

    @classmethod
    def from_env(cls, profile: str | None = None) -> Client:
        """Connect with the environment and profile file only."""
        return cls(ClientConfig.load(profile=profile))

    @classmethod
    def local(cls, run_dir: Path = Path(".run"), base_port: int = 50051) -> Client:
        """The `make up` stack on 127.0.0.1, token from ``<run_dir>/token``."""
        addresses = {n: f"127.0.0.1:{base_port + i}" for i, n in enumerate(SERVICES)}
        return cls.connect(addresses, (run_dir / "token").read_text().strip())

    def close(self) -> None:
        """Close every channel."""
        for ch in self._channels.values():
            ch.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- datasets -------------------------------------------------------------------------------

    def upload(self, path: Path | str, dataset: str | None = None, *, on_progress: _shared.Progress | None = None,
               curation: ds.IngestCuration | None = None, request_id: str | None = None,
               timeout: float = 3600, **metadata: Any) -> ds.UploadDatasetResponse:
        """Stream a local file to a new dataset version (the file is never read whole).

        Args:
            path: the file (jsonl, json, csv, parquet; compressed or archived too).
            dataset: dataset name (default: the file's stem).
            on_progress: called with (bytes sent, total bytes) after each chunk.
            curation: steps applied in the same pass (the stored version is the curated one).
            request_id: idempotency key (default: a fresh one, repeated by retries).
            **metadata: other ``UploadMetadata`` fields (format, validation_policy, ...).
        """
        path = Path(path)
        meta = _shared.upload_metadata(path, dataset, request_id, curation, metadata)
        return self.datasets.UploadDataset(_shared.upload_messages(path, meta, on_progress), timeout=timeout)

    def upload_dataset(self, name: str, path: Path, **metadata: Any) -> ds.UploadDatasetResponse:
        """Same as ``upload(path, name, **metadata)`` (the 0.x name)."""
        return self.upload(path, name, **metadata)

    def curate(self, version_id: str, steps: list[ds.CurationStep], *, split: ds.SplitConfig | None = None,
               max_removal_fraction: float = 0.0, request_id: str = "") -> ds.CurationRun:
        """Start a curation run over a version; returns the run at once (follow it with :meth:`wait`)."""
        req = ds.CurateDatasetRequest(version_id=version_id, steps=steps, split=split,
                                      max_removal_fraction=max_removal_fraction, request_id=request_id)
        return self.datasets.CurateDataset(req).run

    # -- lists: iterators over every page -------------------------------------------------------

    def _iterate(self, name: str, page_size: int, **fields: Any) -> Iterator[Any]:
        lister = _shared.LISTERS[name]
        call = getattr(getattr(self, lister.service), lister.rpc)
        req = _shared.list_request(lister, page_size, fields)
        while True:
            resp = call(req)
            yield from getattr(resp, lister.items)
            if not resp.next_page_token:
                return
            req.page.page_token = resp.next_page_token

    def list_datasets(self, *, page_size: int = 100) -> Iterator[ds.Dataset]:
        """Every dataset of the caller's tenant."""
        return self._iterate("datasets", page_size)

    def list_dataset_versions(self, dataset: str, *, page_size: int = 100) -> Iterator[ds.DatasetVersion]:
        """Every version of a dataset (id or name), newest first."""
        return self._iterate("dataset_versions", page_size, dataset=dataset)

    def rejected_rows(self, version_id: str, *, page_size: int = 500) -> Iterator[ds.RejectedRow]:
        """Every row rejected by validation or removed by curation (a version or curation run id)."""
        return self._iterate("rejected_rows", page_size, version_id=version_id)

    def list_jobs(self, *, statuses: list[int] | None = None, method: int | None = None,
                  labels: Mapping[str, str] | None = None, page_size: int = 100) -> Iterator[tr.Job]:
        """Every job, newest first, filtered by status, method and labels."""
        return self._iterate("jobs", page_size, statuses=statuses, method=method, labels=labels)

    def list_job_checkpoints(self, job_id: str, *, page_size: int = 100) -> Iterator[tr.JobCheckpoint]:
        """Every checkpoint a job registered, by step."""
        return self._iterate("job_checkpoints", page_size, job_id=job_id)

    def list_checkpoints(self, job_id: str, *, order: int | None = None, metric: str | None = None,
                         greater_is_better: bool | None = None, page_size: int = 100) -> Iterator[ck.Manifest]:
        """Every checkpoint manifest of a job (by step, or best first by ``metric``)."""
        return self._iterate("checkpoints", page_size, job_id=job_id, order=order, metric=metric,
                             greater_is_better=greater_is_better)

    def list_evaluations(self, *, page_size: int = 100) -> Iterator[ev.Evaluation]:
        """Every evaluation, newest first."""
        return self._iterate("evaluations", page_size)

    def list_evaluation_samples(self, evaluation_id: str, *, page_size: int = 100) -> Iterator[ev.EvaluationSample]:
        """A finished evaluation's generations side by side (model, baseline, reference), in dataset order."""
        return self._iterate("evaluation_samples", page_size, evaluation_id=evaluation_id)

    # -- jobs and evaluations -------------------------------------------------------------------

    def create_job(self, spec: Mapping[str, Any] | tr.CreateJobRequest, **overrides: Any) -> tr.Job:
        """Create a fine-tuning job from a request or from the job YAML's mapping (see
        :mod:`tuneforge.client.jobspec`); the idempotency key defaults to a fresh one."""
        req = spec if isinstance(spec, tr.CreateJobRequest) else jobspec.to_request(spec)
        for name, value in overrides.items():
            setattr(req, name, value)
        return self.training.CreateJob(req).job

    def create_evaluation(self, request: ev.CreateEvaluationRequest) -> ev.Evaluation:
        """Start an evaluation; returns at once (follow it with :meth:`wait`)."""
        return self.evaluation.CreateEvaluation(request).evaluation

    def estimate_job(self, spec: Mapping[str, Any] | tr.CreateJobRequest, **overrides: Any) -> tr.JobPlan:
        """Plan a job without creating it (EstimateJob): memory per device, whether it fits the cluster
        and the fixes that would, steps, tokens and the estimated duration. Takes what ``create_job`` takes."""
        req = spec if isinstance(spec, tr.CreateJobRequest) else jobspec.to_request(spec)
        for name, value in overrides.items():
            setattr(req, name, value)
        return self.training.EstimateJob(tr.EstimateJobRequest(job=req)).plan

    def wait(self, subject: Any, *, on_event: Callable[[Any], None] | None = None, timeout: float = 24 * 3600,
             kind: str | None = None, on_reattach: Callable[[int], None] | None = None) -> Any:
        """Follow a job, evaluation or curation run until it ends; return its final state.

        Events (``JobEvent``, ``EvaluationProgress``, ``CurationEvent``) go to ``on_event`` in
        order, each once: a dropped stream (a service restart, a proxy timeout) is re-attached after
        the last sequence seen.

        Args:
            subject: a ``Job``/``Evaluation``/``CurationRun`` or its id (``job_``, ``eval_``, ``run_``).
            on_event: called with every event.
            timeout: give up (DeadlineExceeded) after this many seconds.
            kind: "job", "evaluation" or "curation" for ids without the usual prefix.
            on_reattach: called with the last sequence seen each time a dropped stream is re-opened.
        """
        op, ident = _shared.operation_of(subject, kind)
        stream, get = (getattr(getattr(self, op.service), rpc) for rpc in (op.stream_rpc, op.get_rpc))
        after, pause, deadline = 0, _REATTACH_PAUSE_S[0], time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"{op.kind} {ident} did not finish within {timeout:.0f}s")
            try:
                for event in stream(op.stream_request(ident, after), timeout=left):
                    after = event.sequence
                    if on_event:
                        on_event(event)
                obj = getattr(get(op.get_request(ident)), op.field)
                if op.done(obj):
                    return obj
            except (Unavailable, Cancelled):
                pass
            except DeadlineExceeded:
                if time.monotonic() < deadline:
                    continue
                raise
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 2, _REATTACH_PAUSE_S[1])
            if on_reattach:
                on_reattach(after)

    def wait_job(self, job_id: str, on_event: Callable[[tr.JobEvent], None] | None = None,
                 timeout: float = 24 * 3600) -> tr.Job:
        """``wait(job_id, kind="job")``."""
        return self.wait(job_id, on_event=on_event, timeout=timeout, kind="job")

    def wait_evaluation(self, evaluation_id: str, timeout: float = 3600) -> ev.Evaluation:
        """``wait(evaluation_id, kind="evaluation")``."""
        return self.wait(evaluation_id, timeout=timeout, kind="evaluation")

    def wait_curation(self, run_id: str, timeout: float = 3600) -> ds.CurationRun:
        """``wait(run_id, kind="curation")``."""
        return self.wait(run_id, timeout=timeout, kind="curation")

    def download_metrics(self, job_id: str, dest: Path | str | None = None) -> bytes:
        """The job's metrics file (``Job.metrics_file``: JSON lines, one record per logged step or
        evaluation) as it is now; also written to ``dest`` when given (replaced whole).

        Raises:
            FailedPrecondition: the job has logged no metrics yet.
        """
        data = b"".join(c.data for c in self.training.DownloadJobMetrics(tr.DownloadJobMetricsRequest(job_id=job_id)))
        if dest is not None:
            _shared.write_whole(Path(dest), data)
        return data

    def job_metrics(self, job_id: str) -> list[dict[str, Any]]:
        """The job's metrics file as records (``download_metrics`` parsed)."""
        return _shared.metrics_records(self.download_metrics(job_id))

    # -- checkpoints ----------------------------------------------------------------------------

    def download(self, checkpoint: str | ck.Manifest, dest: Path | str, *,
                 on_progress: _shared.Progress | None = None) -> Path:
        """Download every file of a checkpoint into ``dest``, each verified against the manifest's
        sha256 (files already there with the right hash are kept; an interrupted file resumes from
        its offset). Raises ``DataLoss`` on a mismatch (the bad file is removed).

        Args:
            checkpoint: a checkpoint id, ``<job_id>@<alias>`` or a manifest.
            dest: folder to write into (created).
            on_progress: called with (bytes done, total bytes).
        """
        manifest = checkpoint if isinstance(checkpoint, ck.Manifest) else \
            self.checkpoints.GetManifest(ck.GetManifestRequest(checkpoint=checkpoint)).manifest
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        total, done = sum(f.size for f in manifest.files), 0
        for entry in manifest.files:
            target = _shared.safe_target(dest, entry.path)
            if not (target.exists() and target.stat().st_size == entry.size
                    and _shared.sha256_file(target) == entry.sha256):
                self._download_file(manifest.checkpoint_id, entry, target, done, total, on_progress)
            done += entry.size
            if on_progress:
                on_progress(done, total)
        return dest

    def _download_file(self, checkpoint_id: str, entry: ck.FileEntry, target: Path, base: int, total: int,
                       on_progress: _shared.Progress | None) -> None:
        part = target.with_name(target.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        attempts = 0
        while True:
            offset = part.stat().st_size if part.exists() else 0
            try:
                with part.open("ab") as f:
                    for chunk in self.checkpoints.DownloadFile(ck.DownloadFileRequest(
                            checkpoint_id=checkpoint_id, path=entry.path, offset=offset), timeout=3600):
                        f.write(chunk.data)
                        offset += len(chunk.data)
                        if on_progress:
                            on_progress(base + offset, total)
                break
            except Unavailable:
                attempts += 1  # resume from the bytes already written
                if attempts > 5:
                    raise
        got = _shared.sha256_file(part)
        if got != entry.sha256:
            part.unlink()
            raise DataLoss(f"{entry.path}: sha256 {got} does not match the manifest's {entry.sha256}; the partial "
                           "file was removed, download again")
        os.replace(part, target)
