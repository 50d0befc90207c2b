"""One request, one trace across the real services: spans read with the SDK's in-memory exporter.

A tiny job crosses three services: CreateJob (training) leases its dataset version
(datasets), the run continues the trace, writes a checkpoint and registers it (checkpoints). The
spans must form one tree (each child's parent is the span that caused it, across the gRPC hops),
and the run's log lines must carry the same trace id.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.integration.observability.test_metrics import _Stubs, log_records, stack  # noqa: F401 - fixtures
from tests.integration.training.conftest import lora_request, upload_and_split, wait_job
from tuneforge.common import tracing
from tuneforge.training.v1 import training_pb2 as tr

pytestmark = [pytest.mark.integration]

DATASETS = "tuneforge.datasets.v1.DatasetService"
TRAINING = "tuneforge.training.v1.TrainingService"
CHECKPOINTS = "tuneforge.checkpoints.v1.CheckpointService"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    tracing.add_span_processor(processor)
    yield exporter
    tracing.remove_span_processor(processor)


def finished(spans: InMemorySpanExporter, name: str, timeout_s: float = 120.0) -> tuple[ReadableSpan, ...]:
    """All finished spans, once one named `name` is among them.

    A job's status turns SUCCEEDED inside its run (then the run releases its dataset lease and ends), so
    GetJob can say SUCCEEDED before the `training.job.run` span has ended: wait for that condition.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        done = spans.get_finished_spans()
        if any(s.name == name for s in done):
            return done
        assert time.monotonic() < deadline, f"no finished {name} span in {timeout_s} s: {[s.name for s in done]}"
        time.sleep(0.05)


def _hex(span_id: int) -> str:
    return format(span_id, "016x")


class Tree:
    """The finished spans of one trace, by id."""

    def __init__(self, finished: tuple[ReadableSpan, ...], trace_id: int) -> None:
        self.spans = [s for s in finished if s.context.trace_id == trace_id]
        self.by_id = {s.context.span_id: s for s in self.spans}

    def one(self, name: str, kind: SpanKind | None = None) -> ReadableSpan:
        found = [s for s in self.spans if s.name == name and (kind is None or s.kind is kind)]
        assert len(found) == 1, f"{name}: {[(s.name, s.kind) for s in self.spans]}"
        return found[0]

    def all(self, name: str, kind: SpanKind | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name and (kind is None or s.kind is kind)]

    def parent(self, span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, f"{span.name} has no parent"
        assert span.parent.trace_id == span.context.trace_id
        return self.by_id[span.parent.span_id]

    def ancestors(self, span: ReadableSpan) -> list[str]:
        names = []
        while span.parent is not None and span.parent.span_id in self.by_id:
            span = self.by_id[span.parent.span_id]
            names.append(span.name)
        return names


@pytest.mark.slow
def test_a_job_is_one_trace_across_training_datasets_and_checkpoints(stack, spans, log_records):  # noqa: F811
    s = stack.services
    version = upload_and_split(_Stubs(s["datasets"].stub))
    job = s["training"].stub.CreateJob(lora_request(version, steps=2, every=2)).job
    done = wait_job(s["training"].stub, job.id)
    assert done.status == tr.JOB_STATUS_SUCCEEDED, done.error.message
    finished_spans = finished(spans, "training.job.run")

    create = [x for x in finished_spans if x.name == f"{TRAINING}/CreateJob" and x.kind is SpanKind.SERVER]
    assert len(create) == 1
    assert create[0].attributes["tuneforge.tenant"] == "acme"
    assert create[0].attributes["rpc.grpc.status_code_name"] == "OK"
    tree = Tree(finished_spans, create[0].context.trace_id)
    root = tree.one(f"{TRAINING}/CreateJob", SpanKind.SERVER)
    # the test's own stub is a tuneforge channel too: its CLIENT span starts the trace
    caller = tree.parent(root)
    assert caller.kind is SpanKind.CLIENT and caller.name == root.name and caller.parent is None

    # CreateJob -> client span -> the dataset service's server span (across the gRPC hop)
    lease_client = tree.one(f"{DATASETS}/AcquireVersionLease", SpanKind.CLIENT)
    lease_server = tree.one(f"{DATASETS}/AcquireVersionLease", SpanKind.SERVER)
    assert tree.parent(lease_client) is root
    assert tree.parent(lease_server) is lease_client
    assert lease_server.attributes["tuneforge.service"] == "datasets"
    assert lease_server.attributes["rpc.service"] == DATASETS
    assert lease_server.attributes["tuneforge.tenant"] == "acme"  # the caller's own token went along

    # the run continues CreateJob's trace; its checkpoint is written, then registered with the checkpoint service
    run = tree.one("training.job.run")
    assert tree.parent(run) is root
    assert run.attributes["tuneforge.job_id"] == job.id
    # (CreateJob itself writes one too: the base model, registered in the store on first use)
    writes = [w for w in tree.all("checkpoint.write") if "/checkpoints/" in w.attributes["tuneforge.checkpoint.prefix"]]
    assert writes and all("training.job.run" in tree.ancestors(w) for w in writes)
    assert all(w.attributes["tuneforge.checkpoint.bytes"] > 0 for w in writes)
    register_server = tree.all(f"{CHECKPOINTS}/RegisterCheckpoint", SpanKind.SERVER)
    assert register_server, [x.name for x in tree.spans]
    for server in register_server:
        client = tree.parent(server)
        assert client.kind is SpanKind.CLIENT and client.name == server.name
        publish = tree.parent(client)
        assert publish.name == "training.checkpoint.publish"
        assert tree.parent(publish) is run
        assert server.attributes["tuneforge.service"] == "checkpoints"
        assert server.status.status_code is not StatusCode.ERROR
    services = {x.attributes.get("tuneforge.service") for x in tree.spans if x.kind is SpanKind.SERVER}
    assert {"training", "datasets", "checkpoints"} <= services

    # the run's log lines carry the job id, the tenant and this trace id (and the span they were written in)
    trace_id = format(root.context.trace_id, "032x")
    run_lines = [r for r in log_records.records if getattr(r, "ctx_job_id", "") == job.id]
    assert run_lines
    assert {(r.ctx_tenant, r.ctx_trace_id) for r in run_lines} == {("acme", trace_id)}
    span_ids = {_hex(x.context.span_id) for x in tree.spans}
    assert all(getattr(r, "ctx_span_id", "") in span_ids for r in run_lines)
    # and the dataset service's access log line of the lease is in the same trace
    lease_lines = [r for r in log_records.records if r.name == "tuneforge.rpc"
                   and getattr(r, "ctx_method", "") == f"/{DATASETS}/AcquireVersionLease"]
    assert any(r.ctx_trace_id == trace_id for r in lease_lines)

    # the curation run that made the version is a child of the CurateDataset call that queued it
    all_spans = finished(spans, "datasets.curation.run")
    curation = [x for x in all_spans if x.name == "datasets.curation.run"]
    assert len(curation) == 1
    curate_tree = Tree(all_spans, curation[0].context.trace_id)
    assert curate_tree.parent(curation[0]).name == f"{DATASETS}/CurateDataset"
    assert curation[0].attributes["tuneforge.state"] == "SUCCEEDED"
