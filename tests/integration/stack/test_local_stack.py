"""`make up`: four separate service processes, healthy, listed by an outside reflection client."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneforge.cli.stack import SERVICES, wait_serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BUF = Path(sys.executable).with_name("buf")
PROTO_SERVICE = {"datasets": "tuneforge.datasets.v1.DatasetService",
                 "training": "tuneforge.training.v1.TrainingService",
                 "evaluation": "tuneforge.evaluation.v1.EvaluationService",
                 "checkpoints": "tuneforge.checkpoints.v1.CheckpointService"}


def _free_block(n: int) -> int:
    for _ in range(50):
        base = random.randint(20000, 40000)
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of ports")


def _rpc_names(service: str) -> set[str]:
    from importlib import import_module

    pb2 = import_module(f"tuneforge.{service}.v1.{service}_pb2")
    svc = next(iter(pb2.DESCRIPTOR.services_by_name.values()))
    return {m.name for m in svc.methods}


@contextlib.contextmanager
def _stack(run_dir: Path, *options: str) -> Iterator[int]:
    """``tuneforge stack`` on a free block of ports until ready; yields its base port. On leaving,
    Ctrl-C must stop it cleanly (exit 0, "stopped")."""
    base = _free_block(2 * len(SERVICES))  # room for the services behind gates too
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge.cli", "stack", *options, "--base-port", str(base),
                             "--run-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.strip() == "ready" or not line:
                break
        assert lines[-1].strip() == "ready", "".join(lines) + _logs(run_dir)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert "stopped" in out


def _listed_rpcs(address: str, service: str) -> set[str]:
    """The service's RPCs as server reflection lists them (``buf curl --list-methods``)."""
    out = subprocess.run([str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
                          "--list-methods", f"http://{address}"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return {m.rsplit("/", 1)[1] for m in out.split() if m.startswith(PROTO_SERVICE[service] + "/")}


def test_stack_starts_four_healthy_processes_and_stops_cleanly(tmp_path):
    with _stack(tmp_path) as base:
        pids = set()
        for i, name in enumerate(SERVICES):
            address = f"127.0.0.1:{base + i}"
            assert wait_serving(address, 5)
            assert _listed_rpcs(address, name) == _rpc_names(name), name
            pids.add(_pid_listening(base + i))
        assert len(pids) == len(SERVICES), "each service must be its own process"


def test_stack_with_gates_serves_every_service_through_its_gate(tmp_path):
    """``tuneforge stack --gate``: each service's port is a tuneforge-gate's (a process of its own),
    the service listens four ports further on, and everything (health, reflection's bidi stream, the
    RPC list) answers through the gate."""
    from tuneforge.common.grpc.gate import find_binary

    assert find_binary() is not None, "tuneforge-gate is not built: run `make gate` (make test builds it)"
    with _stack(tmp_path, "--gate") as base:
        for i, name in enumerate(SERVICES):
            public, inner = base + i, base + len(SERVICES) + i
            assert "tuneforge-gate" in _listener(public), _listener(public)
            assert "python" in _listener(inner), _listener(inner)
            assert _listed_rpcs(f"127.0.0.1:{public}", name) == _rpc_names(name), name
    assert not any("tuneforge-gate" in _listener(base + i) for i in range(len(SERVICES)))  # the gates stopped too


def _pid_listening(port: int) -> str:
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    return out.split("pid=")[1].split(",")[0] if "pid=" in out else f"unknown-{port}"


def _logs(run_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in run_dir.glob("*.log"))


def _listener(port: int) -> str:
    """The ``users:((name,pid=...))`` part of ``ss`` for the process listening on ``port`` ('' if none)."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    return out.partition("users:")[2]
