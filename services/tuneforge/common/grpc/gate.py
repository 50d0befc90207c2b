"""Launching ``tuneforge-gate`` (``services/gate``, Go): the overload gate in front of one service.

A Python gRPC server takes every call on one polling thread that needs the GIL. Past capacity the
handlers hold the GIL and calls wait in gRPC core's queue, where no admission inside the process
can see them, until their deadline. The gate is a transparent proxy that keeps at most
``max_active`` unary calls in flight to its service and answers the rest RESOURCE_EXHAUSTED
(ErrorInfo reason ``OVERLOADED``, with a RetryInfo) once they have waited ``queue_target_ms``.
Health checks and streaming calls pass straight through (the service caps its streams itself).

``make gate`` builds the binary into ``.tools/bin`` (``make setup`` does too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

BINARY = "tuneforge-gate"
_REPO_TOOLS = Path(__file__).resolve().parents[4] / ".tools" / "bin" / BINARY


def find_binary() -> Path | None:
    """The gate built by ``make gate`` in this checkout, else one on PATH; None if neither."""
    if _REPO_TOOLS.is_file() and os.access(_REPO_TOOLS, os.X_OK):
        return _REPO_TOOLS
    found = shutil.which(BINARY)
    return Path(found) if found else None


def streaming_methods(files: Iterable[FileDescriptor]) -> list[str]:
    """Full names (``/pkg.Service/Method``) of every streaming method of the services in ``files``,
    plus health Watch and reflection: the calls the gate must pass without queueing."""
    methods = []
    for fd in [*files, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR]:
        for service in fd.services_by_name.values():
            methods += [f"/{service.full_name}/{m.name}" for m in service.methods
                        if m.client_streaming or m.server_streaming]
    return sorted(set(methods))


@dataclass
class Gate:
    """A running gate: its process and the address clients use."""

    process: subprocess.Popen[str]
    address: str

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the gate lets calls in flight finish), then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdin:
            self.process.stdin.close()


def start_gate(backend: str, streaming: Sequence[str], *, listen: str = "127.0.0.1:0", max_active: int = 16,
               queue_target_ms: int = 100, burst_wait_ms: int = 500, interval_ms: int = 1000,
               metrics: str = "", binary: Path | None = None, nice: int = 0, log: Path | None = None,
               shutdown_delay_s: float = 0.0, timeout_s: float = 30.0) -> Gate:
    """Start a gate on ``listen`` in front of ``backend`` and wait until it serves.

    While unary calls still find free slots a call may wait ``burst_wait_ms`` for one; once none
    has for ``interval_ms`` (the service is past capacity) a call that cannot start within
    ``queue_target_ms`` of its arrival is refused. ``streaming``: the methods passed straight
    through (``streaming_methods``). ``nice``: the gate's niceness (0: the caller's). ``log``: where
    its own messages go (appended; None: the caller's stderr). ``shutdown_delay_s``: after a SIGTERM
    the gate serves on this long (a second signal cuts it short) before it drains and exits, as in a
    pod whose endpoints are still being removed.

    The gate runs in its own session, so a Ctrl-C meant for the launcher does not stop it before
    the services behind it have drained (``Gate.stop`` does), and it stops by itself if the
    launcher dies (it watches the pipe on its standard input).

    Raises:
        FileNotFoundError: no gate binary (run ``make gate``).
        RuntimeError: the gate exited or did not say where it serves within ``timeout_s``.
    """
    binary = binary or find_binary()
    if binary is None:
        raise FileNotFoundError(f"{BINARY} is not built: run `make gate` (it needs Go)")
    argv = [str(binary), "-listen", listen, "-backend", backend, "-max-active", str(max_active),
            "-queue-target", f"{queue_target_ms}ms", "-burst-wait", f"{burst_wait_ms}ms",
            "-interval", f"{interval_ms}ms", "-streaming", ",".join(streaming), "-exit-on-stdin-eof",
            "-shutdown-delay", f"{int(shutdown_delay_s * 1000)}ms"]
    if metrics:
        argv += ["-metrics", metrics]
    if nice:
        argv = ["nice", "-n", str(nice), *argv]
    # One Go thread runs the gate: a Python service behind it answers a few thousand calls a second
    # at most, which one thread passes on with room to spare, and it leaves the CPUs to the services.
    env = {**os.environ, "GOMAXPROCS": os.environ.get("GOMAXPROCS", "1")}
    err = log.open("ab") if log else None
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                start_new_session=True)
    finally:
        if err:
            err.close()  # the child has its own descriptor
    serving: list[str] = []
    ready = threading.Event()

    def read() -> None:  # the serving line, then drain stdout so the gate never blocks on a full pipe
        for line in proc.stdout or ():
            if not serving and line.startswith(f"{BINARY} serving "):
                serving.append(line)
                ready.set()
        ready.set()  # stdout closed: the gate exited
    threading.Thread(target=read, daemon=True, name=f"{BINARY}-stdout").start()
    ready.wait(timeout_s)
    if not serving:
        proc.kill()
        proc.wait(10)
        where = f"; see {log}" if log else " (its messages went to stderr)"
        raise RuntimeError(f"{BINARY} did not start in front of {backend} within {timeout_s:g} s "
                           f"(exit code {proc.returncode}){where}")
    return Gate(proc, serving[0].split()[2])
