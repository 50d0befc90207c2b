"""The stages of ``make demo``, each through the public gRPC API (see ``cli/demo.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck
from tuneforge.client import Client
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.evaluation.v1 import evaluation_pb2 as ev
from tuneforge.training.v1 import training_pb2 as tr


def say(step: str, text: str = "") -> None:
    """Print one demo line."""
    print(f"[demo] {step}{': ' if text else ''}{text}", flush=True)


def _show_job_event(event: tr.JobEvent) -> None:
    which = event.WhichOneof("payload")
    if which == "status":
        say("  train", f"status {tr.JobStatus.Name(event.status)}")
    elif which == "metrics" and (event.metrics.eval_loss or event.metrics.step % 5 == 0):
        m = event.metrics
        shown = f"eval_loss {m.eval_loss:.4f}" if m.eval_loss else f"loss {m.loss:.4f} lr {m.learning_rate:.2e}"
        say("  train", f"step {m.step:>3} {shown}")
    elif which == "checkpoint_id":
        say("  train", f"checkpoint {event.checkpoint_id} registered")
    elif which == "log":
        say("  train", event.log.message)


class DemoFlow:
    """Upload -> curate -> fine-tune (a TrainingService job) -> evaluate -> export."""

    def __init__(self, client: Client, run_dir: Path, base_name: str, models_dir: Path, steps: int) -> None:
        self.c, self.run_dir, self.base_name, self.models_dir, self.steps = client, run_dir, base_name, models_dir, steps
        self.work = run_dir / "work"
        self.work.mkdir(parents=True, exist_ok=True)

    def run(self, rows: list[dict[str, Any]]) -> None:
        """Every stage in order."""
        raw = self.upload(rows)
        version = self.curate(raw)
        manifest = self.fine_tune(version)
        evaluation_id = self.evaluate(version, manifest)
        self.export(manifest)
        self.report(manifest.lineage.job_id, evaluation_id)

    def upload(self, rows: list[dict[str, Any]]) -> str:
        path = self.work / "raw.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        resp = self.c.upload_dataset("temperature-codes", path, format=ds.DATASET_FORMAT_ALPACA,
                                     validation_policy=ds.VALIDATION_POLICY_SKIP_INVALID,
                                     request_id="demo-upload-1")
        v = resp.validation
        say("upload", f"{v.rows_read} rows read, {v.rows_accepted} accepted, {v.rows_rejected} rejected "
            f"-> version {resp.version.id}")
        report = self.c.datasets.GetRejectedRows(ds.GetRejectedRowsRequest(version_id=resp.version.id))
        for r in report.rows:
            say("  rejected", f"row {r.row} field {r.field or '-'}: {r.reason}")
        return resp.version.id

    def curate(self, version_id: str) -> str:
        steps = [ds.CurationStep(normalize=ds.NormalizeStep(collapse_whitespace=True)),
                 ds.CurationStep(exact_dedup=ds.ExactDedupStep()),
                 ds.CurationStep(near_dedup=ds.NearDedupStep(threshold=0.7, ngram_size=3)),
                 ds.CurationStep(pii=ds.PiiStep(action=ds.PII_ACTION_REDACT))]
        run = self.c.datasets.CurateDataset(ds.CurateDatasetRequest(
            version_id=version_id, steps=steps, request_id="demo-curate-1",
            split=ds.SplitConfig(validation_ratio=0.1, test_ratio=0.15, seed=1))).run
        run = self.c.wait_curation(run.id)
        if run.state != common_pb2.OPERATION_STATE_SUCCEEDED:
            raise RuntimeError(f"curation failed: {run.error.code} {run.error.message}")
        for s in run.steps:
            say("  curate", f"{s.step:<12} {s.rows_in:>4} -> {s.rows_out:<4} (modified {s.rows_modified})")
        out = self.c.datasets.GetDatasetVersion(ds.GetDatasetVersionRequest(version_id=run.output_version_id)).version
        say("curate", f"version {out.id} hash {out.content_hash[:12]} splits {dict(out.split_counts)}")
        return out.id

    def fine_tune(self, version_id: str) -> ck.Manifest:
        """A LoRA SFT job on the curated version (its validation split for evaluation), followed to
        its end; the job registers its checkpoints; returns the result checkpoint's manifest."""
        every = max(self.steps // 2, 1)
        job = self.c.training.CreateJob(tr.CreateJobRequest(
            base_model=self.base_name, method=tr.METHOD_LORA, objective=tr.OBJECTIVE_SFT,
            dataset_version_id=version_id, idempotency_key="demo-train-1", suffix="temperature-codes",
            hyperparameters=tr.Hyperparameters(learning_rate=2e-3, lr_scheduler=tr.LR_SCHEDULER_COSINE, warmup_steps=2,
                                               max_steps=self.steps, micro_batch_size=4, max_seq_length=96, seed=7,
                                               lora_r=8, lora_alpha=16),
            schedule=tr.Schedule(eval_every_steps=every, save_every_steps=every, keep_best_n=1, keep_latest_n=1))).job
        say("train", f"job {job.id} created ({tr.JobStatus.Name(job.status)})")
        job = self.c.wait_job(job.id, on_event=_show_job_event)
        if job.status != tr.JOB_STATUS_SUCCEEDED:
            raise RuntimeError(f"training job {job.id} ended {tr.JobStatus.Name(job.status)}: "
                               f"{job.error.code} {job.error.message}")
        say("train", f"job {job.id} succeeded after {job.current_step} steps, {job.trained_tokens} tokens; "
            f"result checkpoint {job.result_checkpoint_id}")
        return self.c.checkpoints.GetManifest(ck.GetManifestRequest(checkpoint=job.result_checkpoint_id)).manifest

    def evaluate(self, version_id: str, manifest: ck.Manifest) -> str:
        req = ev.CreateEvaluationRequest(
            model=ev.ModelRef(checkpoint_id=manifest.checkpoint_id), baseline=ev.ModelRef(base_model=self.base_name),
            datasets=[ev.EvalDataset(version_id=version_id, split="test", max_samples=20)],
            metrics=[ev.METRIC_PERPLEXITY, ev.METRIC_ROUGE, ev.METRIC_BLEU, ev.METRIC_EXACT_MATCH, ev.METRIC_SAFETY],
            generation=ev.GenerationConfig(max_new_tokens=24, batch_size=8), request_id="demo-eval-1")
        evaluation = self.c.evaluation.CreateEvaluation(req).evaluation
        evaluation = self.c.wait_evaluation(evaluation.id)
        if evaluation.state != common_pb2.OPERATION_STATE_SUCCEEDED:
            raise RuntimeError(f"evaluation failed: {evaluation.error.code} {evaluation.error.message}")
        cmp = self.c.evaluation.CompareModels(ev.CompareModelsRequest(evaluation_id=evaluation.id))
        for m in cmp.comparisons:
            say("  eval", f"{m.name:<18} fine-tuned {m.model_value:10.4f}  base {m.baseline_value:10.4f}  "
                f"{'better' if m.model_better else 'not better'}")
        say("evaluate", cmp.summary)
        return evaluation.id

    def report(self, job_id: str, evaluation_id: str) -> None:
        """The same reports as `tuneforge jobs report` / `tuneforge eval report`."""
        from tuneforge.cli.report import eval_report, job_report

        folder = self.run_dir / "reports"
        job_html = job_report(self.c, job_id, folder / f"{job_id}.html", folder / f"{job_id}.png")
        eval_html = eval_report(self.c, evaluation_id, folder / f"{evaluation_id}.html", folder / f"{evaluation_id}.png")
        say("report", f"{job_html} and {eval_html} (with PNGs beside them)")

    def export(self, manifest: ck.Manifest) -> None:
        out = self.c.checkpoints.ExportCheckpoint(ck.ExportCheckpointRequest(
            checkpoint=manifest.checkpoint_id, format=ck.EXPORT_FORMAT_MERGED))
        say("export", f"merged model ({len(out.files)} files) at {out.uri}")
