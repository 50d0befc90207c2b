"""Proof that nothing crosses as a local path: a 2-worker ZeRO-2 job through CreateJob on a Ray
cluster whose processes run in their own mount namespace, where the test's whole temp folder (the
training service's data folder, its models folder, the uploaded files) is hidden under an empty
tmpfs, with their own temp folder. Inputs and checkpoints live on the real S3 server; the job's
events say where each input came from.

(A second Unix user would do as well, but this machine's Python lives under /root, which no other
user can read.)"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("deepspeed")

from tests.integration.training.conftest import lora_request, stored_job_dir, upload_and_split, wait_job
from tuneforge.engine.distributed import STORAGE_ENV
from tuneforge.training.v1 import training_pb2 as tr

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_started(log: Path, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    """Until ``ray start`` says the node is up (its GCS port opens earlier than that)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ray start exited early: {log.read_text()[-2000:]}"
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"the Ray head did not start within {timeout}s: {log.read_text()[-2000:]}")


def _connect(address: str, timeout: float = 300) -> None:
    """Join the cluster, retrying while its node registers (a loaded machine can be slow)."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        try:
            ray.init(address=address)
            return
        except (RuntimeError, ConnectionError) as exc:
            ray.shutdown()
            if time.monotonic() > deadline:
                raise AssertionError(f"could not join the Ray cluster at {address}: {exc}") from exc
            time.sleep(1)


def _namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def _kill_namespace(ns: str) -> None:
    """Stop every process of the cluster's mount namespace (ours alone: no broad name match)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if _namespace(int(entry.name)) == ns:
                        os.kill(int(entry.name), sig)
                except (OSError, ValueError):
                    continue
        time.sleep(1)


@pytest.fixture
def hidden_ray(s3_server, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A one-node Ray cluster that cannot see the test's temp folder; yields its address."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a mount namespace")
    hidden = tmp_path_factory.getbasetemp()
    # Short: Ray's socket paths under the temp dir must stay below 108 characters.
    home = ROOT / ".cache" / f"rn{secrets.token_hex(3)}"
    for sub in ("tmp", "results"):
        (home / sub).mkdir(parents=True)
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(home / "tmp"), "RAY_TMPDIR": str(home), "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(ROOT / "services"), "TUNEFORGE_S3_ACCESS_KEY": s3_server.access_key,
           "TUNEFORGE_S3_SECRET_KEY": s3_server.secret_key}
    env.pop(STORAGE_ENV, None)
    ray_bin = str(Path(sys.executable).parent / "ray")
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
           'mount -t tmpfs -o size=1m tmpfs "$1" && shift && exec "$@"', "sh", str(hidden),
           ray_bin, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=3",
           "--object-store-memory=300000000", "--include-dashboard=false", f"--temp-dir={home}",
           "--disable-usage-stats"]
    log = home / "ray-start.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_started(log, proc)
        ns = _namespace(proc.pid)
        assert ns != _namespace(os.getpid())
        monkeypatch.setenv(STORAGE_ENV, str(home / "results"))  # Ray Train's run state: the cluster's folder
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if proc.poll() is None:
            _kill_namespace(_namespace(proc.pid))
        proc.wait(timeout=60)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("cluster", ["s3"], indirect=True)
def test_a_zero2_job_trains_on_workers_that_cannot_read_the_services_disk(cluster, hidden_ray, tmp_path):
    import ray

    service_dir = stored_job_dir(tmp_path)
    assert (service_dir / "training.db").exists() or service_dir.is_dir()
    _connect(hidden_ray)
    sees = ray.get(ray.remote(lambda p: os.path.exists(p)).remote(str(service_dir)))
    assert sees is False, "the cluster can read the service's data folder: the proof would prove nothing"
    cluster.training.server.stop(1)  # the fixture's service: restarted on the same folder, joined to the cluster
    cluster.start_training(data_dir=service_dir, train_ray_address=hidden_ray)
    acme = cluster.stack("acme")
    version_id = upload_and_split(acme)
    req = lora_request(version_id, steps=4, every=2, resources=tr.Resources(num_workers=2, zero_stage=2),
                       method=tr.METHOD_FULL)
    req.hyperparameters.micro_batch_size = 2
    job = acme.training.CreateJob(req).job
    done = wait_job(acme.training, job.id, timeout=900)
    events = list(acme.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id)))
    logs = [e.log.message for e in events if e.WhichOneof("payload") == "log"]
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.code, done.error.message, logs)
    for slot in ("base_model", "train", "validation"):
        assert any(m.startswith(f"input {slot}:") and "read by the workers from s3://" in m for m in logs), logs
    losses = [e.metrics.loss for e in events if e.WhichOneof("payload") == "metrics" and e.metrics.loss]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert done.result_checkpoint_id
