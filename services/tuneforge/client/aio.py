"""The asyncio SDK (``grpc.aio``): the same surface as :class:`tuneforge.client.Client`, with
coroutines for calls and async iterators for lists and streams.

    async with AsyncClient.connect() as c:
        up = await c.upload("faq.jsonl", "faq")
        async for job in c.list_jobs():
            print(job.id)
        job = await c.wait(job_id, on_event=print)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck
from tuneforge.client import _shared, jobspec
from tuneforge.client._transport import AsyncService, open_aio_channel
from tuneforge.client.config import SERVICES, ClientConfig
from tuneforge.client.errors import Cancelled, DataLoss, DeadlineExceeded, Unavailable
from tuneforge.client.sdk import _REATTACH_PAUSE_S, STUBS
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.evaluation.v1 import evaluation_pb2 as ev
from tuneforge.training.v1 import training_pb2 as tr


class AsyncClient:
    """The four services over ``grpc.aio`` channels (see :class:`tuneforge.client.Client`)."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._channels = {svc: open_aio_channel(config.addresses[svc], config) for svc in SERVICES}
        services = {svc: AsyncService(STUBS[svc](ch), config.token, config.timeout_s)
                    for svc, ch in self._channels.items()}
        self.datasets, self.training = services["datasets"], services["training"]
        self.evaluation, self.checkpoints = services["evaluation"], services["checkpoints"]

    @classmethod
    def connect(cls, addresses: Mapping[str, str] | str | None = None, token: str | None = None, *,
                timeout: float | None = None, tls: bool | None = None, profile: str | None = None,
                **config: Any) -> AsyncClient:
        """Same resolution as ``Client.connect``."""
        one = addresses if isinstance(addresses, str) else None
        many = addresses if isinstance(addresses, Mapping) else None
        return cls(ClientConfig.load(address=one, addresses=many, token=token, timeout_s=timeout, tls=tls,
                                     profile=profile, **config))

    async def close(self) -> None:
        """Close every channel."""
        for ch in self._channels.values():
            await ch.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- datasets -------------------------------------------------------------------------------

    async def upload(self, path: Path | str, dataset: str | None = None, *,
                     on_progress: _shared.Progress | None = None, curation: ds.IngestCuration | None = None,
                     request_id: str | None = None, timeout: float = 3600,
                     **metadata: Any) -> ds.UploadDatasetResponse:
        """See ``Client.upload``."""
        path = Path(path)
        meta = _shared.upload_metadata(path, dataset, request_id, curation, metadata)
        return await self.datasets.UploadDataset(_shared.upload_messages(path, meta, on_progress), timeout=timeout)

    async def curate(self, version_id: str, steps: list[ds.CurationStep], *, split: ds.SplitConfig | None = None,
                     max_removal_fraction: float = 0.0, request_id: str = "") -> ds.CurationRun:
        """See ``Client.curate``."""
        req = ds.CurateDatasetRequest(version_id=version_id, steps=steps, split=split,
                                      max_removal_fraction=max_removal_fraction, request_id=request_id)
        return (await self.datasets.CurateDataset(req)).run

    # -- lists ----------------------------------------------------------------------------------

    async def _iterate(self, name: str, page_size: int, **fields: Any) -> AsyncIterator[Any]:
        lister = _shared.LISTERS[name]
        call = getattr(getattr(self, lister.service), lister.rpc)
        req = _shared.list_request(lister, page_size, fields)
        while True:
            resp = await call(req)
            for item in getattr(resp, lister.items):
                yield item
            if not resp.next_page_token:
                return
            req.page.page_token = resp.next_page_token

    def list_datasets(self, *, page_size: int = 100) -> AsyncIterator[ds.Dataset]:
        """See ``Client.list_datasets``."""
        return self._iterate("datasets", page_size)

    def list_dataset_versions(self, dataset: str, *, page_size: int = 100) -> AsyncIterator[ds.DatasetVersion]:
        """See ``Client.list_dataset_versions``."""
        return self._iterate("dataset_versions", page_size, dataset=dataset)

    def rejected_rows(self, version_id: str, *, page_size: int = 500) -> AsyncIterator[ds.RejectedRow]:
        """See ``Client.rejected_rows``."""
        return self._iterate("rejected_rows", page_size, version_id=version_id)

    def list_jobs(self, *, statuses: list[int] | None = None, method: int | None = None,
                  labels: Mapping[str, str] | None = None, page_size: int = 100) -> AsyncIterator[tr.Job]:
        """See ``Client.list_jobs``."""
        return self._iterate("jobs", page_size, statuses=statuses, method=method, labels=labels)

    def list_job_checkpoints(self, job_id: str, *, page_size: int = 100) -> AsyncIterator[tr.JobCheckpoint]:
        """See ``Client.list_job_checkpoints``."""
        return self._iterate("job_checkpoints", page_size, job_id=job_id)

    def list_checkpoints(self, job_id: str, *, order: int | None = None, metric: str | None = None,
                         greater_is_better: bool | None = None, page_size: int = 100) -> AsyncIterator[ck.Manifest]:
        """See ``Client.list_checkpoints``."""
        return self._iterate("checkpoints", page_size, job_id=job_id, order=order, metric=metric,
                             greater_is_better=greater_is_better)

    def list_evaluation_samples(self, evaluation_id: str, *,
                                page_size: int = 100) -> AsyncIterator[ev.EvaluationSample]:
        """See ``Client.list_evaluation_samples``."""
        return self._iterate("evaluation_samples", page_size, evaluation_id=evaluation_id)

    def list_evaluations(self, *, page_size: int = 100) -> AsyncIterator[ev.Evaluation]:
        """See ``Client.list_evaluations``."""
        return self._iterate("evaluations", page_size)

    # -- jobs and evaluations -------------------------------------------------------------------

    async def create_job(self, spec: Mapping[str, Any] | tr.CreateJobRequest, **overrides: Any) -> tr.Job:
        """See ``Client.create_job``."""
        req = spec if isinstance(spec, tr.CreateJobRequest) else jobspec.to_request(spec)
        for name, value in overrides.items():
            setattr(req, name, value)
        return (await self.training.CreateJob(req)).job

    async def create_evaluation(self, request: ev.CreateEvaluationRequest) -> ev.Evaluation:
        """See ``Client.create_evaluation``."""
        return (await self.evaluation.CreateEvaluation(request)).evaluation

    async def estimate_job(self, spec: Mapping[str, Any] | tr.CreateJobRequest, **overrides: Any) -> tr.JobPlan:
        """See ``Client.estimate_job``."""
        req = spec if isinstance(spec, tr.CreateJobRequest) else jobspec.to_request(spec)
        for name, value in overrides.items():
            setattr(req, name, value)
        return (await self.training.EstimateJob(tr.EstimateJobRequest(job=req))).plan

    async def wait(self, subject: Any, *, on_event: Callable[[Any], None] | None = None,
                   timeout: float = 24 * 3600, kind: str | None = None,
                   on_reattach: Callable[[int], None] | None = None) -> Any:
        """See ``Client.wait``: follows the events, re-attaching after the last sequence."""
        op, ident = _shared.operation_of(subject, kind)
        stream, get = (getattr(getattr(self, op.service), rpc) for rpc in (op.stream_rpc, op.get_rpc))
        after, pause, deadline = 0, _REATTACH_PAUSE_S[0], time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"{op.kind} {ident} did not finish within {timeout:.0f}s")
            try:
                async for event in stream(op.stream_request(ident, after), timeout=left):
                    after = event.sequence
                    if on_event:
                        on_event(event)
                obj = getattr(await get(op.get_request(ident)), op.field)
                if op.done(obj):
                    return obj
            except (Unavailable, Cancelled):
                pass
            except DeadlineExceeded:
                if time.monotonic() < deadline:
                    continue
                raise
            await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 2, _REATTACH_PAUSE_S[1])
            if on_reattach:
                on_reattach(after)

    # -- checkpoints ----------------------------------------------------------------------------

    async def download_metrics(self, job_id: str, dest: Path | str | None = None) -> bytes:
        """See ``Client.download_metrics``."""
        stream = self.training.DownloadJobMetrics(tr.DownloadJobMetricsRequest(job_id=job_id))
        data = b"".join([c.data async for c in stream])
        if dest is not None:
            _shared.write_whole(Path(dest), data)
        return data

    async def job_metrics(self, job_id: str) -> list[dict[str, Any]]:
        """See ``Client.job_metrics``."""
        return _shared.metrics_records(await self.download_metrics(job_id))

    async def download(self, checkpoint: str | ck.Manifest, dest: Path | str, *,
                       on_progress: _shared.Progress | None = None) -> Path:
        """See ``Client.download`` (sha256-verified, resumable)."""
        manifest = checkpoint if isinstance(checkpoint, ck.Manifest) else \
            (await self.checkpoints.GetManifest(ck.GetManifestRequest(checkpoint=checkpoint))).manifest
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        total, done = sum(f.size for f in manifest.files), 0
        for entry in manifest.files:
            target = _shared.safe_target(dest, entry.path)
            if not (target.exists() and target.stat().st_size == entry.size
                    and _shared.sha256_file(target) == entry.sha256):
                await self._download_file(manifest.checkpoint_id, entry, target, done, total, on_progress)
            done += entry.size
            if on_progress:
                on_progress(done, total)
        return dest

    async def _download_file(self, checkpoint_id: str, entry: ck.FileEntry, target: Path, base: int, total: int,
                             on_progress: _shared.Progress | None) -> None:
        part = target.with_name(target.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        attempts = 0
        while True:
            offset = part.stat().st_size if part.exists() else 0
            try:
                with part.open("ab") as f:
                    async for chunk in self.checkpoints.DownloadFile(ck.DownloadFileRequest(
                            checkpoint_id=checkpoint_id, path=entry.path, offset=offset), timeout=3600):
                        f.write(chunk.data)
                        offset += len(chunk.data)
                        if on_progress:
                            on_progress(base + offset, total)
                break
            except Unavailable:
                attempts += 1
                if attempts > 5:
                    raise
        got = _shared.sha256_file(part)
        if got != entry.sha256:
            part.unlink()
            raise DataLoss(f"{entry.path}: sha256 {got} does not match the manifest's {entry.sha256}; the partial "
                           "file was removed, download again")
        os.replace(part, target)
