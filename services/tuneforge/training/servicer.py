"""TrainingService over gRPC: proto -> domain -> proto. No business logic here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tuneforge.common.auth import current_identity
from tuneforge.common.paging import next_page_token, page_bounds, paginate
from tuneforge.common.streams import TICK_S, SharedFollower
from tuneforge.training import convert
from tuneforge.training.domain.model import EventKind, JobStatus
from tuneforge.training.domain.service import TrainingService
from tuneforge.training.v1 import training_pb2 as pb
from tuneforge.training.v1 import training_pb2_grpc

METRICS_CHUNK = 1 << 20  # bytes per DownloadJobMetrics message (well under gRPC's 4 MiB default)


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    """Thin transport over ``TrainingService``."""

    def __init__(self, service: TrainingService, *, poll_interval_s: float = 0.5) -> None:
        self._svc, self._poll = service, poll_interval_s
        # One poller per followed job, however many clients watch it (watch streams cost no queries each).
        self._events: SharedFollower[tuple[str, str], Any] = SharedFollower(
            lambda key, cursor: self._svc.events_after(key[0], key[1], cursor), sequence=lambda ev: ev.sequence,
            subject_ended=lambda key: self._svc.get(*key).status.terminal, tick_s=min(poll_interval_s, TICK_S))

    def CreateJob(self, request: pb.CreateJobRequest, context: Any) -> pb.CreateJobResponse:
        """Validate, lease the data, queue the job (idempotent on idempotency_key)."""
        # The caller's identity (with its token) goes along: the run calls peers on its behalf.
        with convert.api_terms(request):
            job = self._svc.create(current_identity(), convert.job_request(request), request.idempotency_key)
        return pb.CreateJobResponse(job=convert.job_to_proto(job))

    def GetJob(self, request: pb.GetJobRequest, context: Any) -> pb.GetJobResponse:
        """One job of the caller's tenant."""
        return pb.GetJobResponse(job=convert.job_to_proto(self._svc.get(current_identity().tenant, request.job_id)))

    def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        """A page of jobs, newest first, filtered by status, method and labels."""
        offset, size = page_bounds(request.page.page_size, request.page.page_token)
        items = self._svc.list(current_identity().tenant, convert.filter_from_request(request),
                               limit=size + 1, offset=offset)
        return pb.ListJobsResponse(jobs=[convert.job_to_proto(j) for j in items[:size]],
                                   next_page_token=next_page_token(offset, size, offset + len(items)))

    def CancelJob(self, request: pb.CancelJobRequest, context: Any) -> pb.CancelJobResponse:
        """Cancel a queued or running job (a running one stops after its current step)."""
        return pb.CancelJobResponse(job=convert.job_to_proto(self._svc.cancel(current_identity().tenant, request.job_id)))

    def StreamJobEvents(self, request: pb.StreamJobEventsRequest, context: Any) -> Iterator[pb.JobEvent]:
        """Events after ``after_sequence`` until the job has ended and its log is drained (or the client leaves)."""
        tenant, job_id = current_identity().tenant, request.job_id
        context.add_callback(self._events.wake)  # a client leaving ends its stream at once
        events = self._events.follow(
            (tenant, job_id), cursor=request.after_sequence, is_active=context.is_active,
            is_final=lambda ev: ev.kind is EventKind.STATUS and JobStatus[ev.data["status"]].terminal)
        for ev in events:
            yield convert.event_to_proto(ev)

    def DownloadJobMetrics(self, request: pb.DownloadJobMetricsRequest, context: Any) -> Iterator[pb.JobMetricsChunk]:
        """The job's metrics file (JSON lines) as it is now, in chunks."""
        data = self._svc.metrics_file(current_identity().tenant, request.job_id)
        for start in range(0, len(data), METRICS_CHUNK):
            yield pb.JobMetricsChunk(data=data[start:start + METRICS_CHUNK])

    def ListJobCheckpoints(self, request: pb.ListJobCheckpointsRequest, context: Any) -> pb.ListJobCheckpointsResponse:
        """The checkpoints the job registered, by step."""
        page_bounds(request.page.page_size, request.page.page_token)  # a bad page is INVALID_ARGUMENT first
        items = self._svc.checkpoints(current_identity().tenant, request.job_id)
        page, token = paginate(items, request.page.page_size, request.page.page_token)
        return pb.ListJobCheckpointsResponse(checkpoints=[convert.checkpoint_to_proto(c) for c in page],
                                             next_page_token=token)

    def EstimateJob(self, request: pb.EstimateJobRequest, context: Any) -> pb.EstimateJobResponse:
        """Plan a job as CreateJob would take it (memory per device, fit and fixes, steps, tokens,
        duration); nothing is created, leased or queued."""
        with convert.api_terms(request.job):
            plan = self._svc.estimate(current_identity(), convert.job_request(request.job))
        return pb.EstimateJobResponse(plan=convert.plan_to_proto(plan))
