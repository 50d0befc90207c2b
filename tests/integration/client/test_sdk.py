"""SDK 1.0 against the real services: the examples run as users run them, typed errors with field
violations, retries of UNAVAILABLE that reuse the idempotency key (and none for deletes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.integration.client.conftest import job_spec, write_rows
from tuneforge.client import Client, ClientConfig, errors
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.datasets.v1 import datasets_pb2_grpc
from tuneforge.training.v1 import training_pb2 as tr
from tuneforge.training.v1 import training_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[3]


def _run(script: str, *args: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True,
                         env={**env, "PYTHONPATH": f"{ROOT / 'services'}:{ROOT}"}, timeout=600, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_sdk_tour_example_runs_against_the_services(platform, tmp_path):
    out = _run("sdk_tour.py", str(write_rows(tmp_path / "tour.jsonl")), "--out", str(tmp_path / "out"),
               env=platform.env())
    lines = out.splitlines()
    sent = next(line for line in lines if line.startswith("uploaded"))
    size = (tmp_path / "tour.jsonl").stat().st_size
    assert f"({size}/{size} bytes)" in sent  # the progress callback saw every byte
    assert sum(line.startswith("  rejected row") for line in lines) == 2
    assert any(line.startswith("  curation event") for line in lines)
    job_line = next(line for line in lines if line.startswith("job "))
    assert "JOB_STATUS_SUCCEEDED after 4 steps" in job_line
    assert next(line for line in lines if line.startswith("metrics file")).endswith("metrics.jsonl: steps [1, 2, 3, 4]")
    assert "tour" in next(line for line in lines if line.startswith("datasets:"))
    assert len(json.loads(next(line for line in lines if line.startswith("checkpoints:")).split(":", 1)[1]
                          .replace("'", '"'))) == 2  # steps 2 and 4, read one page at a time
    assert any(p.name == "adapter_model.safetensors" for p in (tmp_path / "out" / "checkpoint").rglob("*")), \
        sorted(str(p) for p in (tmp_path / "out").rglob("*"))
    violations = json.loads(next(line for line in lines if line.startswith("violations:")).split(":", 1)[1])
    assert "hyperparameters.max_steps" in {field for field, _ in violations}


def test_async_example_follows_lists_downloads_and_maps_errors(platform, trained, tmp_path):
    data = write_rows(tmp_path / "async.jsonl")
    out = _run("async_tour.py", trained.job.id, "--data", str(data), "--out", str(tmp_path / "ckpt"),
               env=platform.env())
    assert f"uploaded {data.stat().st_size} bytes -> dsv_" in out and "curated -> dsv_" in out
    assert "'JOB_STATUS_RUNNING', 'JOB_STATUS_SUCCEEDED'" in out
    assert trained.job.id in out and "not found: NOT_FOUND" in out
    assert (tmp_path / "ckpt" / "model" / "adapter_model.safetensors").exists()
    streamed = sum(e.WhichOneof("payload") == "metrics" for e in trained.events)
    assert f"metrics file: {streamed} records" in out
    assert len((tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()) == streamed


def test_errors_are_typed_and_carry_field_violations(platform, trained):
    with platform.client() as c:
        with pytest.raises(errors.InvalidArgument) as info:
            c.training.CreateJob(tr.CreateJobRequest(resources=tr.Resources(zero_stage=4)))
        fields = {v.field for v in info.value.violations}
        assert {"base_model", "method", "objective", "resources.zero_stage"} <= fields
        assert isinstance(info.value, grpc.RpcError) and info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(errors.NotFound):
            c.training.GetJob(tr.GetJobRequest(job_id="job_nope"))
    with platform.client(platform.other_token) as other, pytest.raises(errors.NotFound):
        other.wait(trained.job.id)  # another tenant's job does not exist for it
    with Client.connect(platform.addresses, "wrong-token", config_file=None) as c, \
            pytest.raises(errors.Unauthenticated):
        list(c.list_jobs())


def test_download_is_verified_and_skips_good_files(platform, trained, tmp_path):
    with platform.client() as c:
        manifest = c.checkpoints.GetManifest(__import__("tuneforge.checkpoints.v1.checkpoints_pb2",
                                                        fromlist=["x"]).GetManifestRequest(
            checkpoint=trained.job.result_checkpoint_id)).manifest
        progress: list[tuple[int, int]] = []
        dest = c.download(manifest, tmp_path / "d", on_progress=lambda d, t: progress.append((d, t)))
        total = sum(f.size for f in manifest.files)
        assert progress[-1] == (total, total)
        # A file damaged locally is fetched again; the good ones are kept.
        victim = dest / manifest.files[0].path
        victim.write_bytes(b"corrupt")
        c.download(manifest, dest)
        assert victim.stat().st_size == manifest.files[0].size
        # A manifest that disagrees with the bytes is DataLoss, and nothing half-written is left.
        bad = type(manifest).FromString(manifest.SerializeToString())
        bad.files[0].sha256 = "0" * 64
        with pytest.raises(errors.DataLoss):
            c.download(bad, tmp_path / "bad")
        assert not list((tmp_path / "bad").rglob("*.part"))


class _Flaky(training_pb2_grpc.TrainingServiceServicer, datasets_pb2_grpc.DatasetServiceServicer):
    """A real gRPC server that answers UNAVAILABLE to the first ``fail`` calls of each RPC."""

    def __init__(self, fail: int) -> None:
        self.fail, self.calls, self.keys = fail, {}, []

    def _maybe_fail(self, name: str, context: grpc.ServicerContext) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.calls[name] <= self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")

    def CreateJob(self, request, context):
        self.keys.append(request.idempotency_key)
        self._maybe_fail("CreateJob", context)
        return tr.CreateJobResponse(job=tr.Job(id="job_1"))

    def GetJob(self, request, context):
        self._maybe_fail("GetJob", context)
        return tr.GetJobResponse(job=tr.Job(id=request.job_id))

    def DeleteDataset(self, request, context):
        self._maybe_fail("DeleteDataset", context)
        return ds.DeleteDatasetResponse()


@pytest.fixture
def flaky():
    servicer = _Flaky(fail=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    training_pb2_grpc.add_TrainingServiceServicer_to_server(servicer, server)
    datasets_pb2_grpc.add_DatasetServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_unavailable_is_retried_with_the_same_idempotency_key_and_deletes_are_not(flaky):
    servicer, address = flaky
    with Client.connect(address, "t", config_file=None) as c:
        assert c.training.GetJob(tr.GetJobRequest(job_id="job_9")).job.id == "job_9"
        assert servicer.calls["GetJob"] == 3
        assert c.training.CreateJob(tr.CreateJobRequest(base_model="m")).job.id == "job_1"
        assert len(servicer.keys) == 3 and len(set(servicer.keys)) == 1 and servicer.keys[0]  # one generated key
        c.training.CreateJob(tr.CreateJobRequest(base_model="m", idempotency_key="mine"))
        assert servicer.keys[-1] == "mine"
        with pytest.raises(errors.Unavailable):
            c.datasets.DeleteDataset(ds.DeleteDatasetRequest(dataset="x"))
        assert servicer.calls["DeleteDataset"] == 1


def test_wait_reattaches_after_the_stream_drops_and_sees_every_event_once(platform, trained):
    with platform.client() as c:
        job = c.create_job({**job_spec(trained.version, steps=30, every=3), "suffix": "reattach"})
        events: list[tr.JobEvent] = []
        checkpointed = threading.Event()
        result: dict[str, tr.Job] = {}

        def on_event(event: tr.JobEvent) -> None:
            events.append(event)
            if event.WhichOneof("payload") == "checkpoint_id":
                checkpointed.set()

        reattached: list[int] = []
        follower = threading.Thread(target=lambda: result.update(job=c.wait(
            job, on_event=on_event, timeout=600, on_reattach=reattached.append)))
        follower.start()
        assert checkpointed.wait(300), "no checkpoint event before the restart"
        platform.restart_training()  # the stream drops; wait() re-attaches after the last sequence seen
        follower.join(600)
        assert result["job"].status == tr.JOB_STATUS_SUCCEEDED and result["job"].current_step == 30
        sequences = [e.sequence for e in events]
        assert sequences == list(range(1, len(sequences) + 1))  # every event once, in order, none lost
        logs = [e.log.message for e in events if e.WhichOneof("payload") == "log"]
        assert any("re-queued" in m for m in logs), logs  # it really did restart under the stream
        assert reattached and reattached[0] >= 1 and reattached == sorted(reattached)


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is needed to make a test certificate")
def test_tls_connects_with_the_ca_file_and_refuses_an_unknown_certificate(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    servicer = _Flaky(fail=0)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    training_pb2_grpc.add_TrainingServiceServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    server.start()
    try:
        env = {"TUNEFORGE_ADDRESS": f"localhost:{port}", "TUNEFORGE_TOKEN": "t", "TUNEFORGE_TLS": "true",
               "TUNEFORGE_TLS_CA_FILE": str(cert)}
        with Client(ClientConfig.load(environ=env, config_file=None)) as c:
            assert c.training.GetJob(tr.GetJobRequest(job_id="job_tls")).job.id == "job_tls"
        with Client.connect(f"localhost:{port}", "t", tls=True, config_file=None, timeout=5) as c, \
                pytest.raises(errors.Unavailable):  # system roots do not trust the self-signed certificate
            c.training.GetJob(tr.GetJobRequest(job_id="job_tls"))
    finally:
        server.stop(0)
