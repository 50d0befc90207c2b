"""Control-plane load test: read RPCs at rising open-loop rates with watch streams open, beside a
minimal grpcio server (same protos, trivial handlers, no interceptors) as the baseline.

    python bench/control_plane.py --json bench/control_plane.json --markdown bench/control_plane.md
    python bench/control_plane.py --tiny          # a few requests: the correctness check the tests run

The script starts everything itself on 127.0.0.1 (never another host) and is bounded in requests
(``--max-requests``) and time (``--seconds`` per rate, ``--deadline-s`` per call):

- the embedded-default stack: the real datasets, checkpoints and training services
  (``python -m tuneforge.<svc>``: SQLite, a ``file://`` store, auth on), seeded through their own
  API with a dataset, a job and a registered checkpoint. The job runs on an *idle engine* (it
  waits for its cancel, using no CPU): the watchers follow a live job, and what is measured is the
  control plane, not training. The services get ``--max-workers``/``--max-streams`` (the
  defaults, 32/16, hold no 200 streams: each open stream holds a handler thread in sync gRPC)
  and ``--max-active-calls``/``--queue-target-ms`` (the overload shedding: unary calls running at
  once, and how long one may wait to start before it is answered RESOURCE_EXHAUSTED);
- the baseline: one grpcio server serving the same three services with handlers that answer an
  empty message (a stream waits for its client to leave), the same thread count, no interceptors.

For each target: ``--streams`` ``StreamJobEvents`` calls are opened and held; then, for each rate,
GetJob/ListJobs/ListDatasets/GetManifest (the checkpoint read) are sent round-robin at that rate
(open loop: sent on schedule whether or not earlier calls have answered) for ``--seconds``, while a
health check (grpc.health.v1 Check) runs every 100 ms. Per rate: achieved rps (answered OK per
second), latency p50/p95/p99 of OK calls, errors by status code, health-check latency, and the
knee: the first rate that misses the goal (p99 <= 20 ms, no errors, >= 95 % of the offered rate).
The load generator is one asyncio process (grpc.aio); on a small machine it shares the CPUs with
the servers, so the baseline shows what the machine and the generator allow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services"))
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck  # noqa: E402
from tuneforge.checkpoints.v1 import checkpoints_pb2_grpc as ck_grpc  # noqa: E402
from tuneforge.datasets.v1 import datasets_pb2 as ds  # noqa: E402
from tuneforge.datasets.v1 import datasets_pb2_grpc as ds_grpc  # noqa: E402
from tuneforge.training.v1 import training_pb2 as tr  # noqa: E402
from tuneforge.training.v1 import training_pb2_grpc as tr_grpc  # noqa: E402

TENANT = "bench"
BASE = "tiny"
GOAL_P99_MS = 20.0
HEALTH_EVERY_S = 0.1
RPCS = ("GetJob", "ListJobs", "ListDatasets", "GetManifest")


# ----------------------------------------------------------------------------------------- targets

@dataclass
class Target:
    """Where the load goes: addresses of the three services and what to ask for."""

    name: str
    training: str
    datasets: str
    checkpoints: str
    token: str
    job_id: str = "job"
    checkpoint_id: str = "ckpt"
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each server process has used so far, by its command line."""
        tick = os.sysconf("SC_CLK_TCK")
        used: dict[str, float] = {}
        for proc in self.processes:
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            argv = [str(a) for a in proc.args] if isinstance(proc.args, list) else [str(proc.args)]
            argv = argv[3:] if argv[:2] == ["nice", "-n"] else argv  # nice execs the server: same pid
            name = next((a for a in argv if a.startswith("tuneforge.") or a == "--serve-training"), argv[0])
            name = {"--serve-training": "tuneforge.training"}.get(name, Path(name).name)
            key = f"{name} ({proc.pid})"
            used[key] = round((int(fields[11]) + int(fields[12])) / tick, 2)
        return used

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_serving(address: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120) -> None:
    """Wait until the server at ``address`` answers SERVING (or fail with its log's tail)."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"the server on {address} did not start:\n{tail}")


def _spawn(argv: Sequence[str], env: dict[str, str], log: Path, nice: int = 0) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        prefix = ["nice", "-n", str(nice)] if nice else []
        return subprocess.Popen([*prefix, sys.executable, *argv], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def _base_env(run_dir: Path, token: str, args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEFORGE_", "OTEL_"))}
    env.update({
        "PYTHONPATH": f"{ROOT / 'services'}:{ROOT}", "TUNEFORGE_HOST": "127.0.0.1",
        "TUNEFORGE_OBJECT_STORE_URI": (run_dir / "objects").as_uri(), "TUNEFORGE_AUTH_TOKENS": f"{TENANT}:{token}",
        "TUNEFORGE_MODELS_DIR": str(run_dir / "models"), "TUNEFORGE_MAX_WORKERS": str(args.max_workers),
        "TUNEFORGE_MAX_STREAMS": str(args.max_streams), "TUNEFORGE_MAX_ACTIVE_CALLS": str(args.max_active_calls),
        "TUNEFORGE_QUEUE_TARGET_MS": str(args.queue_target_ms), "HF_HUB_OFFLINE": "1",
    })
    return env


def start_stack(run_dir: Path, args: argparse.Namespace) -> Target:
    """The real datasets, checkpoints and training services (embedded defaults), seeded."""
    return _stack(run_dir / "stack", args, gated=False)


def start_gated_stack(run_dir: Path, args: argparse.Namespace) -> Target:
    """The same stack with a tuneforge-gate in front of each service: clients (and the services'
    peer calls) reach every service through its gate."""
    return _stack(run_dir / "gated", args, gated=True)


def _stack(run_dir: Path, args: argparse.Namespace, gated: bool) -> Target:
    from tuneforge.checkpoints.v1 import checkpoints_pb2
    from tuneforge.common.grpc.gate import start_gate, streaming_methods
    from tuneforge.datasets.v1 import datasets_pb2
    from tuneforge.engine.models.tiny import build_tiny_model
    from tuneforge.training.v1 import training_pb2

    run_dir.mkdir(parents=True, exist_ok=True)
    build_tiny_model(run_dir / "models" / BASE, seed=0)
    token = secrets.token_urlsafe(24)
    env = _base_env(run_dir, token, args)
    names = ("datasets", "checkpoints", "training")
    ports = {name: _free_port() for name in names}  # where the services listen
    public = {name: _free_port() for name in names} if gated else ports  # where clients call them
    target = Target("tuneforge behind tuneforge-gate" if gated else "tuneforge", f"127.0.0.1:{public['training']}",
                    f"127.0.0.1:{public['datasets']}", f"127.0.0.1:{public['checkpoints']}", token)
    env.update({"TUNEFORGE_DATASETS_ADDRESS": target.datasets, "TUNEFORGE_CHECKPOINTS_ADDRESS": target.checkpoints})
    files = {"datasets": datasets_pb2.DESCRIPTOR, "checkpoints": checkpoints_pb2.DESCRIPTOR,
             "training": training_pb2.DESCRIPTOR}
    try:
        for name in names:
            svc_env = {**env, "TUNEFORGE_PORT": str(ports[name]), "TUNEFORGE_DATA_DIR": str(run_dir / name)}
            argv = ["bench/control_plane.py", "--serve-training"] if name == "training" else ["-m", f"tuneforge.{name}"]
            log = run_dir / f"{name}.log"
            proc = _spawn(argv, svc_env, log, args.server_nice)
            target.processes.append(proc)
            _wait_serving(f"127.0.0.1:{ports[name]}", proc, log)
            if gated:
                gate = start_gate(f"127.0.0.1:{ports[name]}", streaming_methods([files[name]]),
                                  listen=f"127.0.0.1:{public[name]}", max_active=args.gate_max_active,
                                  queue_target_ms=args.queue_target_ms, binary=args.gate, nice=args.server_nice,
                                  log=run_dir / f"{name}-gate.log")
                target.processes.append(gate.process)  # type: ignore[arg-type]
        _seed(target, run_dir)
    except BaseException:
        target.stop()
        raise
    return target


def _seed(target: Target, run_dir: Path) -> None:
    """A dataset, a live job (idle engine) and a registered checkpoint, through the services' API."""
    from tuneforge.common.storage import open_object_store
    from tuneforge.common.storage.checkpoint_writer import CheckpointWriter

    auth = (("authorization", f"Bearer {target.token}"),)
    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}."} for i in range(64)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    with grpc.insecure_channel(target.datasets) as ch:
        def upload() -> Any:
            yield ds.UploadDatasetRequest(metadata=ds.UploadMetadata(dataset_name="bench", file_name="bench.jsonl"))
            yield ds.UploadDatasetRequest(chunk=data)
        version = ds_grpc.DatasetServiceStub(ch).UploadDataset(upload(), metadata=auth, timeout=120).version.id
    with grpc.insecure_channel(target.training) as ch:
        stub = tr_grpc.TrainingServiceStub(ch)
        job = stub.CreateJob(tr.CreateJobRequest(
            base_model=BASE, method=tr.METHOD_LORA, objective=tr.OBJECTIVE_SFT, dataset_version_id=version,
            hyperparameters=tr.Hyperparameters(max_steps=10, micro_batch_size=4, lora_r=8, max_seq_length=64)),
            metadata=auth, timeout=120).job
        target.job_id = job.id
        deadline = time.monotonic() + 60
        while stub.GetJob(tr.GetJobRequest(job_id=job.id), metadata=auth, timeout=10).job.status != \
                tr.JOB_STATUS_RUNNING:
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job.id} did not start")
            time.sleep(0.1)
    folder = run_dir / "checkpoint"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    prefix = f"{job.id}/step-1"
    store = open_object_store((run_dir / "objects").as_uri())
    manifest = CheckpointWriter(store).write(folder, f"tenants/{TENANT}/checkpoints/{prefix}/", {"step": 1})
    with grpc.insecure_channel(target.checkpoints) as ch:
        registered = ck_grpc.CheckpointServiceStub(ch).RegisterCheckpoint(ck.RegisterCheckpointRequest(
            job_id=job.id, step=1, kind=ck.CHECKPOINT_KIND_LORA, prefix=prefix,
            files=[ck.FileEntry(path=f.path, size=f.size, sha256=f.sha256) for f in manifest.files]),
            metadata=auth, timeout=60)
        target.checkpoint_id = registered.manifest.checkpoint_id


def start_baseline(run_dir: Path, args: argparse.Namespace) -> Target:
    """The minimal grpcio server, in its own process like the services."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'services'}:{ROOT}"}
    log = run_dir / "baseline.log"
    proc = _spawn(["bench/control_plane.py", "--serve-baseline", str(port), "--max-workers", str(args.max_workers)],
                  env, log, args.server_nice)
    address = f"127.0.0.1:{port}"
    target = Target("grpcio baseline", address, address, address, "unused", processes=[proc])
    try:
        _wait_serving(address, proc, log)
    except BaseException:
        target.stop()
        raise
    return target


# ---------------------------------------------------------------------------------------- servers

def serve_training() -> None:
    """The training service as ``python -m tuneforge.training`` runs it, its engine idle: a job's
    run waits for its cancel (or the service's stop), so a watched job stays live at no CPU cost."""
    import tuneforge.training.app as app
    from tuneforge.common.grpc.main import run_service
    from tuneforge.training.domain.ports import Outcome, Progress
    from tuneforge.training.settings import TrainingSettings

    class IdleEngine:
        def __init__(self, *args: Any, **kwargs: Any) -> None:  # the runner's arguments (files, secrets, work)
            pass

        def run(self, spec: Any, on_progress: Callable[[Progress], None], cancel: threading.Event) -> Outcome:
            on_progress(Progress("started", 0, {"total_steps": float(spec.hyperparameters.max_steps)}))
            cancel.wait()
            return Outcome("cancelled", 0, {})

    app.EngineRunner = IdleEngine  # type: ignore[misc,assignment]
    sys.exit(run_service(TrainingSettings, app.build_app))


def serve_baseline(port: int, max_workers: int) -> None:
    """Same protos, trivial handlers (empty answers), health; no interceptors."""
    from grpc_health.v1 import health

    class Training(tr_grpc.TrainingServiceServicer):
        def GetJob(self, request: Any, context: Any) -> Any:
            return tr.GetJobResponse()

        def ListJobs(self, request: Any, context: Any) -> Any:
            return tr.ListJobsResponse()

        def StreamJobEvents(self, request: Any, context: Any) -> Any:
            context.send_initial_metadata(())
            done = threading.Event()
            context.add_callback(done.set)
            done.wait()
            return iter(())

    class Datasets(ds_grpc.DatasetServiceServicer):
        def ListDatasets(self, request: Any, context: Any) -> Any:
            return ds.ListDatasetsResponse()

    class Checkpoints(ck_grpc.CheckpointServiceServicer):
        def GetManifest(self, request: Any, context: Any) -> Any:
            return ck.GetManifestResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    tr_grpc.add_TrainingServiceServicer_to_server(Training(), server)
    ds_grpc.add_DatasetServiceServicer_to_server(Datasets(), server)
    ck_grpc.add_CheckpointServiceServicer_to_server(Checkpoints(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(experimental_non_blocking=True), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


# ------------------------------------------------------------------------------------------- load

def _pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 2)


@dataclass
class RateResult:
    """One rate against one target."""

    target: str
    offered_rps: int
    sent: int
    ok: int
    achieved_rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    errors: dict[str, int]
    health_p50_ms: float | None
    health_p99_ms: float | None
    health_max_ms: float | None
    health_errors: int
    streams_open: int
    stream_errors: dict[str, int]

    def meets_goal(self) -> bool:
        return (not self.errors and self.p99_ms is not None and self.p99_ms <= GOAL_P99_MS
                and self.achieved_rps >= 0.95 * self.offered_rps)


class Load:
    """Open-loop load on one target, with its watch streams and the health probe."""

    def __init__(self, target: Target, deadline_s: float) -> None:
        self.target, self.deadline_s = target, deadline_s
        self.metadata = (("authorization", f"Bearer {target.token}"),)
        self.channels: list[grpc.aio.Channel] = []
        self.stream_errors: Counter[str] = Counter()
        self.streams_open = 0

    def _channel(self, address: str) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(address)
        self.channels.append(ch)
        return ch

    async def open(self, streams: int) -> list[asyncio.Task[None]]:
        t = self.target
        # a few channels per service: one HTTP/2 connection caps concurrent streams (100 by default)
        self.training = [tr_grpc.TrainingServiceStub(self._channel(t.training)) for _ in range(4)]
        self.datasets = ds_grpc.DatasetServiceStub(self._channel(t.datasets))
        self.checkpoints = ck_grpc.CheckpointServiceStub(self._channel(t.checkpoints))
        self.health = health_pb2_grpc.HealthStub(self._channel(t.training))
        watchers = [asyncio.create_task(self._watch(i)) for i in range(streams)]
        deadline = time.monotonic() + 60
        while self.streams_open + sum(self.stream_errors.values()) < streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return watchers

    async def _watch(self, i: int) -> None:
        call = self.training[i % len(self.training)].StreamJobEvents(
            tr.StreamJobEventsRequest(job_id=self.target.job_id), metadata=self.metadata)
        opened = False
        try:
            await call.initial_metadata()  # the server has taken the call (sent with its first event)
            opened, self.streams_open = True, self.streams_open + 1
            async for _ in call:
                pass
            code = await call.code()
            if code is not grpc.StatusCode.CANCELLED:
                self.stream_errors["ENDED_" + code.name] += 1
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.RpcError as exc:
            self.stream_errors[exc.code().name] += 1
        finally:
            if opened:
                self.streams_open -= 1

    def _request(self, i: int) -> Any:
        name = RPCS[i % len(RPCS)]
        md, timeout = self.metadata, self.deadline_s
        if name == "GetJob":
            return self.training[i % 4].GetJob(tr.GetJobRequest(job_id=self.target.job_id), metadata=md, timeout=timeout)
        if name == "ListJobs":
            return self.training[i % 4].ListJobs(tr.ListJobsRequest(), metadata=md, timeout=timeout)
        if name == "ListDatasets":
            return self.datasets.ListDatasets(ds.ListDatasetsRequest(), metadata=md, timeout=timeout)
        return self.checkpoints.GetManifest(ck.GetManifestRequest(checkpoint=self.target.checkpoint_id),
                                            metadata=md, timeout=timeout)

    async def _one(self, i: int, latencies: list[float], errors: Counter[str]) -> None:
        start = time.perf_counter()
        try:
            await self._request(i)
            latencies.append((time.perf_counter() - start) * 1000)
        except grpc.RpcError as exc:
            errors[exc.code().name] += 1

    async def _health(self, stop: asyncio.Event, latencies: list[float], errors: list[int]) -> None:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                await self.health.Check(health_pb2.HealthCheckRequest(), timeout=self.deadline_s)
                latencies.append((time.perf_counter() - start) * 1000)
            except grpc.RpcError:
                errors[0] += 1
            await asyncio.sleep(HEALTH_EVERY_S)

    async def rate(self, rps: int, seconds: float, max_requests: int) -> RateResult:
        count = min(max_requests, max(1, round(rps * seconds)))
        latencies: list[float] = []
        health: list[float] = []
        health_errors = [0]
        errors: Counter[str] = Counter()
        stop = asyncio.Event()
        prober = asyncio.create_task(self._health(stop, health, health_errors))
        stream_errors_before = Counter(self.stream_errors)
        pending: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._one(i, latencies, errors))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)
        elapsed = max(time.perf_counter() - start, count / rps)
        stop.set()
        await prober
        return RateResult(
            self.target.name, rps, count, len(latencies), round(len(latencies) / elapsed, 1),
            _pct(latencies, 50), _pct(latencies, 95), _pct(latencies, 99), dict(errors),
            _pct(health, 50), _pct(health, 99), round(max(health), 2) if health else None, health_errors[0],
            self.streams_open, dict(self.stream_errors - stream_errors_before))

    async def close(self, watchers: list[asyncio.Task[None]]) -> None:
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        for ch in self.channels:
            await ch.close()


async def measure(target: Target, rates: Sequence[int], seconds: float, streams: int, deadline_s: float,
                  max_requests: int) -> tuple[list[RateResult], dict[str, int]]:
    load = Load(target, deadline_s)
    watchers = await load.open(streams)
    opened = {"open": load.streams_open, **load.stream_errors}
    try:
        results = [await load.rate(rps, seconds, max_requests) for rps in rates]
    finally:
        await load.close(watchers)
    return results, opened


# ----------------------------------------------------------------------------------------- report

def knee(results: Sequence[RateResult]) -> int | None:
    """The first offered rate that misses the goal (None: every rate met it)."""
    return next((r.offered_rps for r in results if not r.meets_goal()), None)


def markdown(report: dict[str, Any]) -> str:
    head = ("| target | offered rps | achieved rps | p50 ms | p95 ms | p99 ms | errors | health p50/p99/max ms "
            "| streams open |\n|---|---:|---:|---:|---:|---:|---|---|---:|\n")
    lines = []
    for r in report["results"]:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "0"
        health = "/".join("-" if v is None else f"{v:g}" for v in (r["health_p50_ms"], r["health_p99_ms"],
                                                                    r["health_max_ms"]))
        lines.append(f"| {r['target']} | {r['offered_rps']} | {r['achieved_rps']:g} | {r['p50_ms']} | {r['p95_ms']} "
                     f"| {r['p99_ms']} | {errors} | {health} | {r['streams_open']} |")
    knees = "; ".join(f"{name}: {'none (every rate met the goal)' if k is None else f'{k} rps'}"
                      for name, k in report["knee"].items())
    return head + "\n".join(lines) + f"\n\nKnee (first rate missing p99 <= {GOAL_P99_MS:g} ms, no errors, " \
        f">= 95 % of the offered rate): {knees}.\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    rates = [int(r) for r in args.rates.split(",")]
    if args.tiny:
        rates, args.seconds, args.streams = [20], 0.5, 4
    total = sum(min(args.max_requests, round(r * args.seconds)) for r in rates)
    results: list[RateResult] = []
    streams: dict[str, dict[str, int]] = {}
    cpu: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as tmp:
        run_dir = Path(tmp)
        starts = (start_stack, start_gated_stack, start_baseline) if args.gate else (start_stack, start_baseline)
        for start in starts:
            target = start(run_dir, args)
            try:
                cpu_before = target.cpu_seconds()
                got, opened = asyncio.run(measure(target, rates, args.seconds, args.streams, args.deadline_s,
                                                  args.max_requests))
                cpu[target.name] = {k: round(v - cpu_before.get(k, 0.0), 2) for k, v in target.cpu_seconds().items()}
            finally:
                target.stop()
            results += got
            streams[target.name] = opened
    by_target: dict[str, list[RateResult]] = {}
    for r in results:
        by_target.setdefault(r.target, []).append(r)
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {"rates": rates, "seconds_per_rate": args.seconds, "watch_streams": args.streams,
                     "deadline_s": args.deadline_s, "max_workers": args.max_workers, "max_streams": args.max_streams,
                     "max_active_calls": args.max_active_calls, "queue_target_ms": args.queue_target_ms,
                     "gate_max_active": args.gate_max_active if args.gate else None,
                     "server_nice": args.server_nice,
                     "requests_per_target": total, "rpcs": list(RPCS)},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "grpcio": grpc.__version__},
        "streams_at_start": streams,
        "server_cpu_seconds": cpu,
        "results": [asdict(r) for r in results],
        "knee": {name: knee(rs) for name, rs in by_target.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="50,100,200,500,1000", help="offered rates, requests/s (comma-separated)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per rate")
    p.add_argument("--streams", type=int, default=200, help="StreamJobEvents calls held open")
    p.add_argument("--deadline-s", type=float, default=5.0, help="deadline of every call")
    p.add_argument("--max-requests", type=int, default=20_000, help="most requests sent at one rate")
    p.add_argument("--max-workers", type=int, default=320, help="TUNEFORGE_MAX_WORKERS of the services (and the "
                   "baseline's threads)")
    p.add_argument("--max-streams", type=int, default=224, help="TUNEFORGE_MAX_STREAMS of the services")
    p.add_argument("--max-active-calls", type=int, default=0, help="TUNEFORGE_MAX_ACTIVE_CALLS of the services: unary "
                   "calls run at once (0: the services' default, 4 per CPU and at least 16)")
    p.add_argument("--queue-target-ms", type=int, default=100, help="TUNEFORGE_QUEUE_TARGET_MS of the services: a unary "
                   "call that cannot start within this of its arrival is RESOURCE_EXHAUSTED (0: it waits)")
    p.add_argument("--gate", type=Path, default=None, help="tuneforge-gate binary: also measure the stack with a "
                   "gate in front of each service (default: the one `make gate` built, if any)")
    p.add_argument("--no-gate", action="store_true", help="do not measure the gated stack")
    p.add_argument("--gate-max-active", type=int, default=16, help="the gates' -max-active: unary calls in flight to "
                   "each service")
    p.add_argument("--server-nice", type=int, default=5, help="niceness of every server process (the services, the "
                   "gates, the baseline): on a small machine the load generator must not be starved by the servers "
                   "it measures, or its own lateness is counted as their latency (0: same priority)")
    p.add_argument("--tiny", action="store_true", help="a few requests at one low rate: a correctness check")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--markdown", type=Path, help="write the table here")
    p.add_argument("--serve-training", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.no_gate:
        args.gate = None
    elif args.gate is None:
        from tuneforge.common.grpc.gate import find_binary
        args.gate = find_binary()
    if args.serve_training:
        serve_training()
        return 0
    if args.serve_baseline:
        serve_baseline(args.serve_baseline, args.max_workers)
        return 0
    if args.streams > args.max_streams:
        p.error(f"--streams {args.streams} needs --max-streams >= {args.streams}")
    report = run(args)
    table = markdown(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
