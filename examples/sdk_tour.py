"""A tour of the Python SDK, run in CI against real services (tests/integration/client/test_sdk.py).

    export TUNEFORGE_ADDRESS=127.0.0.1:50051   # or TUNEFORGE_<SERVICE>_ADDRESS per service
    export TUNEFORGE_TOKEN=...                 # or a profile in ~/.config/tuneforge/config.yaml
    python examples/sdk_tour.py data.jsonl --base tiny-base --out ./out

Upload with a progress callback -> curate with a split and follow it -> a LoRA job from the same
YAML shape as the engine's spec, followed event by event -> list everything through the
iterators -> download the result checkpoint, sha256-verified -> a bad request, with its field
violations as attributes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tuneforge.client import Client, errors
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.training.v1 import training_pb2 as tr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--base", default="tiny-base")
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args()
    seen: dict[str, int] = {}

    with Client.connect() as c:  # the environment and profile say where and who
        up = c.upload(args.data, "tour", validation_policy=ds.VALIDATION_POLICY_SKIP_INVALID,
                      on_progress=lambda done, total: seen.update(sent=done, total=total))
        print(f"uploaded {up.validation.rows_accepted} rows ({seen['sent']}/{seen['total']} bytes) -> {up.version.id}")
        for row in c.rejected_rows(up.version.id):
            print(f"  rejected row {row.row} {row.field}: {row.reason}")

        run = c.curate(up.version.id, [ds.CurationStep(exact_dedup=ds.ExactDedupStep())],
                       split=ds.SplitConfig(validation_ratio=0.2, test_ratio=0.1, seed=1))
        run = c.wait(run, on_event=lambda e: print(f"  curation event {e.sequence}: {e.message}"))
        print(f"curated -> {run.output_version_id}")

        spec = {"model": {"name": args.base},
                "data": {"train": {"dataset_version": run.output_version_id}, "max_seq_length": 96},
                "method": {"kind": "lora", "lora": {"r": 8}},
                "hyperparameters": {"learning_rate": 2e-3, "max_steps": 4, "micro_batch_size": 4},
                "schedule": {"save_every_steps": 2}, "suffix": "tour"}
        job = c.create_job(spec)
        losses: list[float] = []

        def on_event(event: tr.JobEvent) -> None:
            if event.WhichOneof("payload") == "metrics" and event.metrics.loss:
                losses.append(event.metrics.loss)

        job = c.wait(job, on_event=on_event)
        print(f"job {job.id} {tr.JobStatus.Name(job.status)} after {job.current_step} steps; losses {losses}")
        stored = c.job_metrics(job.id)  # the job's metrics file, kept in the object store by the run
        print(f"metrics file {job.metrics_file}: steps {[r['step'] for r in stored if r['loss']]}")

        print("datasets:", [d.name for d in c.list_datasets(page_size=1)])  # one per page: every page is read
        print("jobs:", [j.id for j in c.list_jobs(page_size=1)])
        print("checkpoints:", [m.checkpoint_id for m in c.list_checkpoints(job.id, page_size=1)])

        folder = c.download(job.result_checkpoint_id, args.out / "checkpoint",
                            on_progress=lambda done, total: seen.update(downloaded=done))
        print(f"downloaded {seen['downloaded']} bytes, verified, into {folder}")

        try:
            c.create_job({**spec, "hyperparameters": {"max_steps": 3, "epochs": 2}})
        except errors.InvalidArgument as exc:
            print("violations:", json.dumps([[v.field, v.description] for v in exc.violations]))


if __name__ == "__main__":
    main()
