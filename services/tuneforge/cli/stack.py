"""``tuneforge stack`` (``make up``): the four services as separate processes on 127.0.0.1.

Embedded defaults (SQLite files and a ``file://`` object store under ``.run/``) unless the
environment says otherwise: every ``TUNEFORGE_*`` variable is passed through, so
``TUNEFORGE_OBJECT_STORE_URI=s3://...`` and ``TUNEFORGE_DATABASE_URL=postgresql+psycopg://...``
switch the same processes to S3 and PostgreSQL. A development token is generated once
(``.run/token``) unless ``TUNEFORGE_AUTH_TOKENS`` is set. Ctrl-C stops them all cleanly.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tuneforge.client.config import CLIENT_ENV_VARS
from tuneforge.common.grpc.gate import Gate, find_binary, start_gate, streaming_methods

SERVICES = ("datasets", "training", "evaluation", "checkpoints")


@dataclass
class Proc:
    """One service process (and the gate in front of it, with ``--gate``)."""

    name: str
    port: int
    popen: subprocess.Popen[bytes]
    gate: Gate | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def dev_token(run_dir: Path) -> str:
    """The local stack's token, generated once with 0600 permissions."""
    path = run_dir / "token"
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _env(name: str, port: int, run_dir: Path, token: str, ports: dict[str, int], metrics_port: int = 0) -> dict[str, str]:
    # The client's own variables (TUNEFORGE_TOKEN, ...) are not service settings: services reject them.
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_VARS}
    env.setdefault("TUNEFORGE_AUTH_TOKENS", f"default:{token}")
    env.update({"TUNEFORGE_PORT": str(port), "TUNEFORGE_HOST": "127.0.0.1", "TUNEFORGE_SERVICE_NAME": name})
    if metrics_port:
        env["TUNEFORGE_METRICS_PORT"] = str(metrics_port)
    env.setdefault("TUNEFORGE_DATA_DIR", str(run_dir / "data"))
    for peer, p in ports.items():
        env.setdefault(f"TUNEFORGE_{peer.upper()}_ADDRESS", f"127.0.0.1:{p}")
    return env


def wait_serving(address: str, timeout: float) -> bool:
    """Poll grpc.health.v1 until SERVING or timeout."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                time.sleep(0.3)
    return False


def start(base_port: int, run_dir: Path, timeout: float = 120.0, metrics_base_port: int = 0,
          gate: bool = False) -> list[Proc]:
    """Start every service; raise RuntimeError (after stopping the others) if one fails.

    With ``metrics_base_port`` the services serve Prometheus ``/metrics`` on it and the next ports,
    in ``SERVICES`` order (else no metrics endpoint, the services' default). With ``gate`` a
    tuneforge-gate serves each service's port and passes calls to the service on the port four
    further on (``base_port + 4 + i``); the services call each other through the gates too.
    """
    token = dev_token(run_dir)
    ports = {name: base_port + i for i, name in enumerate(SERVICES)}
    binary = find_binary() if gate else None
    if gate and binary is None:
        raise RuntimeError("--gate needs tuneforge-gate: run `make gate` (it needs Go)")
    procs = []
    for i, (name, port) in enumerate(ports.items()):
        own = port + len(SERVICES) if gate else port
        log = open(run_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child for its lifetime
        popen = subprocess.Popen([sys.executable, "-m", f"tuneforge.{name}"], stdout=log, stderr=subprocess.STDOUT,
                                 env=_env(name, own, run_dir, token, ports,
                                          metrics_base_port + i if metrics_base_port else 0))
        procs.append(Proc(name, port, popen))
    try:
        for p in procs:
            inner = f"127.0.0.1:{p.port + len(SERVICES)}" if gate else p.address
            if not wait_serving(inner, timeout) or p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} did not become SERVING on {inner}; see {run_dir / (p.name + '.log')}")
            if gate:
                p.gate = start_gate(inner, streaming_methods([_descriptor(p.name)]), listen=p.address, binary=binary,
                                    log=run_dir / f"{p.name}-gate.log")
                if not wait_serving(p.address, timeout):
                    raise RuntimeError(f"the gate in front of {p.name} did not answer on {p.address}")
    except BaseException:
        stop(procs)
        raise
    return procs


def _descriptor(service: str) -> Any:
    from importlib import import_module

    return import_module(f"tuneforge.{service}.v1.{service}_pb2").DESCRIPTOR


def stop(procs: list[Proc], grace: float = 15.0) -> None:
    """SIGTERM every process (they drain in-flight calls), then wait; SIGKILL stragglers."""
    for p in procs:
        if p.popen.poll() is None:
            p.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
    for p in procs:  # the gates last: the services' peer calls go through them while they drain
        if p.gate is not None:
            p.gate.stop(max(0.1, deadline - time.monotonic()))


def run(base_port: int, run_dir: Path, gate: bool = False) -> int:
    """Start, print addresses, block until Ctrl-C/SIGTERM or a child exits, then stop all."""
    procs = start(base_port, run_dir, gate=gate)
    print("tuneforge stack is up (token in .run/token):")
    for p in procs:
        print(f"  {p.name:<12} {p.address}" + (f"  (tuneforge-gate in front of 127.0.0.1:{p.port + len(SERVICES)})"
                                               if p.gate else ""))
    print("ready", flush=True)
    stopping = False

    def _on_signal(_s: int, _f: object) -> None:
        nonlocal stopping
        stopping = True
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    while not stopping and all(p.popen.poll() is None and (p.gate is None or p.gate.process.poll() is None)
                               for p in procs):
        time.sleep(0.2)
    dead = [p.name for p in procs if p.popen.poll() is not None or (p.gate and p.gate.process.poll() is not None)]
    stop(procs)
    print("stopped", flush=True)
    return 1 if dead and not stopping else 0
