"""Checkpoint transfer benchmark: the checkpoint service vs the raw ``minio`` SDK, same server, same run.

Starts a real S3 server (versitygw, our MinIO-compatible stand-in: MinIO's Go module is refused
by the Go proxy here) and the checkpoint service in-process, writes a checkpoint of several
files (``--size-mb`` in total, default 500), then for ``--rounds`` rounds times:

- service upload: ``CheckpointWriter`` (what training workers run: streamed multipart upload with
  sha256 recorded per object, manifest last) + ``RegisterCheckpoint`` (size/sha256 check, commit);
- service download (gRPC): ``DownloadFile`` streams of every file, verified by the server;
- service download (presigned): ``GetDownloadUrl`` + plain HTTP GET, sha256 checked by the client;
- raw upload/download: ``Minio.fput_object`` / ``fget_object`` of the same files (SDK defaults).

Prints medians (MB/s) and service/raw ratios as a markdown table; ``--json`` writes them too.

    .venv/bin/python bench/checkpoints_transfer.py --size-mb 500 --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT / "services"), str(_ROOT)]

from tests.fixtures.s3 import S3Server, _free_port, find_server_binary, server_version  # noqa: E402

from tuneforge.checkpoints.adapters.objects import folder_key  # noqa: E402
from tuneforge.checkpoints.app import CheckpointSettings, build_app  # noqa: E402
from tuneforge.checkpoints.v1 import checkpoints_pb2 as pb  # noqa: E402
from tuneforge.checkpoints.v1 import checkpoints_pb2_grpc as pb_grpc  # noqa: E402
from tuneforge.common.grpc.client import channel  # noqa: E402
from tuneforge.common.settings import load_settings  # noqa: E402
from tuneforge.common.storage import open_object_store  # noqa: E402
from tuneforge.common.storage.checkpoint_writer import CheckpointWriter  # noqa: E402

SHARES = {"model-00001-of-00002.safetensors": 0.45, "model-00002-of-00002.safetensors": 0.30,
          "optimizer.safetensors": 0.20, "trainer_state.safetensors": 0.05}
BUCKET = "bench-ckpt"


def make_files(folder: Path, size_mb: int) -> dict[str, int]:
    """Write the checkpoint's files (random bytes: incompressible, like weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, share in SHARES.items():
        size = max(1, int(size_mb * share * (1 << 20)))
        with (folder / name).open("wb") as out:
            left = size
            while left:
                n = min(left, 8 << 20)
                out.write(os.urandom(n))
                left -= n
        sizes[name] = size
    return sizes


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def service_upload(writer: CheckpointWriter, stub: pb_grpc.CheckpointServiceStub, src: Path, step: int) -> str:
    prefix = f"bench/step-{step}"
    files = writer.write(src, folder_key("bench", prefix)).files
    req = pb.RegisterCheckpointRequest(
        job_id="bench", step=step, kind=pb.CHECKPOINT_KIND_FULL, prefix=prefix,
        files=[pb.FileEntry(path=f.path, size=f.size, sha256=f.sha256) for f in files])
    return stub.RegisterCheckpoint(req, timeout=600).manifest.checkpoint_id


def service_download(stub: pb_grpc.CheckpointServiceStub, checkpoint_id: str, dest: Path) -> None:
    for name in SHARES:
        with (dest / name).open("wb") as out:
            for msg in stub.DownloadFile(pb.DownloadFileRequest(checkpoint_id=checkpoint_id, path=name), timeout=600):
                out.write(msg.data)


def presigned_download(stub: pb_grpc.CheckpointServiceStub, checkpoint_id: str, dest: Path,
                       expected: dict[str, str]) -> None:
    for name in SHARES:
        url = stub.GetDownloadUrl(pb.GetDownloadUrlRequest(checkpoint_id=checkpoint_id, path=name), timeout=60).url
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=600) as resp, (dest / name).open("wb") as out:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected[name]:
            raise SystemExit(f"presigned download of {name} has the wrong sha256")


def run(size_mb: int, rounds: int) -> dict[str, object]:
    """Run the benchmark; returns medians (seconds, MB/s) and ratios."""
    work = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=os.environ.get("TMPDIR")))
    server = S3Server(binary=find_server_binary(), data_dir=work / "s3", log_path=work / "s3.log",
                      port=_free_port(), version="", access_key="bench" + secrets.token_hex(6),
                      secret_key=secrets.token_urlsafe(30))
    server.version = server_version(server.binary)
    server.data_dir.mkdir()
    server.start()
    token = secrets.token_urlsafe(24)
    settings = load_settings(CheckpointSettings, environ={}, port=0, data_dir=work / "svc",
                             auth_tokens=f"bench:{token}", object_store_uri=server.uri(BUCKET),
                             s3_access_key=server.access_key, s3_secret_key=server.secret_key,
                             hygiene_interval_s=0, max_message_bytes=64 << 20, log_level="WARNING")
    app = build_app(settings)
    try:
        return _measure(server, app.address, token, settings, work, size_mb, rounds)
    finally:
        app.stop(1)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _measure(server: S3Server, address: str, token: str, settings: CheckpointSettings, work: Path,
             size_mb: int, rounds: int) -> dict[str, object]:
    src = work / "src"
    sizes = make_files(src, size_mb)
    total_mb = sum(sizes.values()) / 1e6
    shas = {n: hashlib.sha256((src / n).read_bytes()).hexdigest() for n in SHARES}
    stub = pb_grpc.CheckpointServiceStub(channel(address, token, default_timeout=600))
    store = open_object_store(settings.object_store_uri, access_key=server.access_key,
                              secret_key=server.secret_key)
    writer = CheckpointWriter(store)
    raw = server.client()
    times: dict[str, list[float]] = {k: [] for k in
                                     ("service_upload", "raw_upload", "service_download_grpc",
                                      "service_download_presigned", "raw_download")}
    for r in range(rounds):
        for key, seconds in _round(r, work / f"dl{r}", src, sizes, shas, writer, stub, raw).items():
            times[key].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    mbps = {k: total_mb / v for k, v in med.items()}
    return {
        "size_mb": round(total_mb, 1), "files": len(SHARES), "rounds": rounds, "server": f"versitygw {server.version}",
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "median_mb_s": {k: round(v, 1) for k, v in mbps.items()},
        "ratio_upload": round(mbps["service_upload"] / mbps["raw_upload"], 3),
        "ratio_download_grpc": round(mbps["service_download_grpc"] / mbps["raw_download"], 3),
        "ratio_download_presigned": round(mbps["service_download_presigned"] / mbps["raw_download"], 3),
    }


def _round(r: int, dest: Path, src: Path, sizes: dict[str, int], shas: dict[str, str],
           writer: CheckpointWriter, stub: pb_grpc.CheckpointServiceStub, raw: object) -> dict[str, float]:
    """One timed round of every path; checks every downloaded file's size."""
    for sub in ("svc", "url", "raw"):
        (dest / sub).mkdir(parents=True)
    ids: list[str] = []
    out = {
        "service_upload": timed(lambda: ids.append(service_upload(writer, stub, src, r + 1))),
        "raw_upload": timed(lambda: [raw.fput_object(BUCKET, f"raw/{r}/{n}", str(src / n))  # type: ignore[attr-defined]
                                     for n in SHARES]),
    }
    out["service_download_grpc"] = timed(lambda: service_download(stub, ids[0], dest / "svc"))
    out["service_download_presigned"] = timed(lambda: presigned_download(stub, ids[0], dest / "url", shas))
    out["raw_download"] = timed(lambda: [raw.fget_object(BUCKET, f"raw/{r}/{n}",  # type: ignore[attr-defined]
                                                         str(dest / "raw" / n)) for n in SHARES])
    for sub in ("svc", "url", "raw"):
        for n in SHARES:
            if (dest / sub / n).stat().st_size != sizes[n]:
                raise SystemExit(f"round {r}: {sub}/{n} has the wrong size")
    shutil.rmtree(dest)
    return out


def table(result: dict[str, object]) -> str:
    """The result as the markdown table recorded in bench/README.md."""
    s, m = result["median_s"], result["median_mb_s"]
    rows = [("upload", "service (CheckpointWriter + RegisterCheckpoint)", "service_upload", "ratio_upload"),
            ("upload", "raw minio fput_object", "raw_upload", None),
            ("download", "service DownloadFile (gRPC stream, verified)", "service_download_grpc",
             "ratio_download_grpc"),
            ("download", "service GetDownloadUrl + HTTP GET (client sha256)", "service_download_presigned",
             "ratio_download_presigned"),
            ("download", "raw minio fget_object", "raw_download", None)]
    lines = ["| direction | path | median s | MB/s | vs raw |", "|---|---|---:|---:|---:|"]
    for direction, label, key, ratio in rows:
        vs = f"{result[ratio]:.2f}x" if ratio else "1.00x"
        lines.append(f"| {direction} | {label} | {s[key]:.2f} | {m[key]:.0f} | {vs} |")  # type: ignore[index]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=500, help="total checkpoint size (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; medians are reported")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    result = run(args.size_mb, args.rounds)
    print(f"{result['size_mb']} MB in {result['files']} files, {result['rounds']} rounds, {result['server']}")
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
