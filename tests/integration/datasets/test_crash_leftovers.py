"""kill -9 of a real dataset service mid-upload: the spool (and any staging) it left is swept at
the next start-up, and the timer sweeps what no live call holds."""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from tuneforge.common.grpc.client import channel
from tuneforge.common.workdirs import WorkFolders
from tuneforge.datasets.v1 import datasets_pb2 as pb
from tuneforge.datasets.v1 import datasets_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration
SERVICES = Path(__file__).resolve().parents[3] / "services"


def _start(data_dir: Path, token: str) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    env.update(TUNEFORGE_DATA_DIR=str(data_dir), TUNEFORGE_AUTH_TOKENS=f"acme:{token}", TUNEFORGE_PORT="0",
               PYTHONPATH=os.pathsep.join([str(SERVICES), env.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge.datasets"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        line = lines.get(timeout=120)
    except queue.Empty:
        proc.kill()
        pytest.fail("the dataset service did not start within 120 s")
    assert "listening on" in line, line
    return proc, line.rsplit(" ", 1)[-1].strip()


def _wait_for(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_killed_upload_leaves_nothing_after_the_next_start(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(16)
    work = tmp_path / "data" / "work"
    proc, address = _start(tmp_path / "data", token)
    hold = threading.Event()

    def chunks():
        yield pb.UploadDatasetRequest(metadata=pb.UploadMetadata(dataset_name="big", file_name="big.jsonl"))
        yield pb.UploadDatasetRequest(chunk=b'{"text": "row"}\n' * 4096)
        hold.wait(60)  # the upload stays open until the process is gone

    stub = pb_grpc.DatasetServiceStub(channel(address, token, default_timeout=60))

    def upload() -> None:
        with contextlib.suppress(grpc.RpcError):  # the server dies under it
            stub.UploadDataset(chunks())
    caller = threading.Thread(target=upload, daemon=True)
    caller.start()
    try:
        def spooled() -> bool:
            return any(p.stat().st_size > 0 for p in work.glob("upload-*/upload"))
        assert _wait_for(spooled), "the upload never reached the spool"
        stage = work / "stage-left-by-a-curation-run"  # a curation run's staging, killed mid-run
        stage.mkdir()
        (stage / "part-0.parquet").write_bytes(b"x" * 1024)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        hold.set()
    assert list(work.glob("upload-*")) and stage.exists()  # what the crash left
    proc, _ = _start(tmp_path / "data", token)
    try:
        assert not list(work.glob("upload-*")) and not stage.exists()
        assert (work / "cache").is_dir() or not (work / "cache").exists()  # caches are not leftovers
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_the_timer_sweeps_only_folders_no_live_call_holds(tmp_path: Path) -> None:
    folders = WorkFolders(tmp_path, ("upload-", "stage-"), grace_s=0.0)
    live = folders.make("upload-")
    left = tmp_path / "stage-crashed"
    left.mkdir()
    other = tmp_path / "cache"
    other.mkdir()
    stop = folders.start_sweeper(0.05)
    try:
        assert _wait_for(lambda: not left.exists(), timeout=30)
    finally:
        stop()
    assert live.exists() and other.exists()
    folders.release(live)
    assert not live.exists()
