"""The stages of ``make demo``, each through the public gRPC API (see ``cli/demo.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck
from tuneforge.client import Client
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.evaluation.v1 import evaluation_pb2 as ev


def say(step: str, text: str = "") -> None:
    """Print one demo line."""
    print(f"[demo] {step}{': ' if text else ''}{text}", flush=True)


class DemoFlow:
    """Upload -> curate -> fine-tune -> register -> evaluate -> export."""

    def __init__(self, client: Client, run_dir: Path, base_name: str, models_dir: Path, steps: int) -> None:
        self.c, self.run_dir, self.base_name, self.models_dir, self.steps = client, run_dir, base_name, models_dir, steps
        self.work = run_dir / "work"
        self.work.mkdir(parents=True, exist_ok=True)

    def run(self, rows: list[dict[str, Any]]) -> None:
        """Every stage in order."""
        raw = self.upload(rows)
        version = self.curate(raw)
        train, val = self.fetch_split(version, "train"), self.fetch_split(version, "validation")
        manifest = self.fine_tune(version, train, val)
        self.evaluate(version, manifest)
        self.export(manifest)

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

    def fetch_split(self, version_id: str, split: str) -> Path:
        """Canonical rows of one split, paged through PreviewRows, as the engine's JSONL input."""
        path, offset, rows = self.work / f"{split}.jsonl", 0, []
        while True:
            page = self.c.datasets.PreviewRows(ds.PreviewRowsRequest(version_id=version_id, split=split,
                                                                     limit=500, offset=offset)).rows
            rows += [json_format.MessageToDict(r) for r in page]
            offset += len(page)
            if len(page) < 500:
                break
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    def fine_tune(self, version_id: str, train: Path, val: Path) -> ck.Manifest:
        from tuneforge.cli._demo_train import train_and_register

        return train_and_register(self.c, version_id, train, val, self.base_name, self.models_dir,
                                  self.run_dir, self.steps)

    def evaluate(self, version_id: str, manifest: ck.Manifest) -> None:
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

    def export(self, manifest: ck.Manifest) -> None:
        out = self.c.checkpoints.ExportCheckpoint(ck.ExportCheckpointRequest(
            checkpoint=manifest.checkpoint_id, format=ck.EXPORT_FORMAT_MERGED))
        say("export", f"merged model ({len(out.files)} files) at {out.uri}")
