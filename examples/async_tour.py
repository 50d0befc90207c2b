"""The asyncio SDK (grpc.aio): the same surface as the sync client, run in CI against real services.

    python examples/async_tour.py JOB_ID --data data.jsonl --out ./out
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from tuneforge.client import AsyncClient, errors
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.training.v1 import training_pb2 as tr


async def main(job_id: str, data: Path, out: Path) -> None:
    async with AsyncClient.connect() as c:
        sent: list[int] = []
        up = await c.upload(data, "async-tour", validation_policy=ds.VALIDATION_POLICY_SKIP_INVALID,
                            on_progress=lambda done, total: sent.append(done))
        run = await c.wait(await c.curate(up.version.id, [ds.CurationStep(exact_dedup=ds.ExactDedupStep())]))
        print(f"uploaded {sent[-1]} bytes -> {up.version.id}; curated -> {run.output_version_id}")
        statuses: list[str] = []

        def on_event(event: tr.JobEvent) -> None:
            if event.WhichOneof("payload") == "status":
                statuses.append(tr.JobStatus.Name(event.status))

        job = await c.wait(job_id, on_event=on_event)  # a finished job: replays its events, returns at once
        print("statuses:", statuses)
        print("jobs:", [j.id async for j in c.list_jobs(page_size=1)])
        folder = await c.download(job.result_checkpoint_id, out)
        metrics = await c.download_metrics(job.id, out / "metrics.jsonl")  # the job's metrics file, from the store
        print(f"metrics file: {len(metrics.splitlines())} records")
        print("downloaded:", sorted(p.name for p in folder.iterdir()))
        try:
            await c.training.GetJob(tr.GetJobRequest(job_id="job_doesnotexist"))
        except errors.NotFound as exc:
            print("not found:", exc.code().name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("job_id")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args()
    asyncio.run(main(args.job_id, args.data, args.out))
