"""The asyncio SDK (grpc.aio): the same surface as the sync client, run in CI against real services.

    python examples/async_tour.py JOB_ID --out ./out
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from tuneforge.client import AsyncClient, errors
from tuneforge.training.v1 import training_pb2 as tr


async def main(job_id: str, out: Path) -> None:
    async with AsyncClient.connect() as c:
        statuses: list[str] = []

        def on_event(event: tr.JobEvent) -> None:
            if event.WhichOneof("payload") == "status":
                statuses.append(tr.JobStatus.Name(event.status))

        job = await c.wait(job_id, on_event=on_event)  # a finished job: replays its events, returns at once
        print("statuses:", statuses)
        print("jobs:", [j.id async for j in c.list_jobs(page_size=1)])
        folder = await c.download(job.result_checkpoint_id, out)
        print("downloaded:", sorted(p.name for p in folder.iterdir()))
        try:
            await c.training.GetJob(tr.GetJobRequest(job_id="job_doesnotexist"))
        except errors.NotFound as exc:
            print("not found:", exc.code().name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("job_id")
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args()
    asyncio.run(main(args.job_id, args.out))
