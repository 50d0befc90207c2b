"""Every ``tuneforge`` command against the real services (in-process servers, the CLI in-process
as a user's shell would run it: environment for the address and token, argv, stdout/stderr)."""

from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.integration.client.conftest import job_spec, ok_json, write_rows
from tuneforge.training.v1 import training_pb2 as tr

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_datasets_commands(cli, tmp_path):
    data = write_rows(tmp_path / "cars.jsonl")
    up = ok_json(cli, "datasets", "upload", str(data), "--name", "cars")
    assert up["upload"]["validation"]["rows_rejected"] == 2 and len(up["rejected"]) == 2
    version = up["upload"]["version"]["id"]
    assert {r["field"] for r in up["rejected"]} == {"output", "instruction"}

    code, out, err = cli("datasets", "upload", str(data), "--name", "cars")  # the people's view
    assert code == 0 and "2 rejected" in out and "rejected rows" in out and "is missing" in out, out + err

    code, out, err = cli("datasets", "upload", str(data), "--name", "strict", "--reject-invalid")
    assert code == 1 and not out and "fix these fields" in err, err  # the bad rows, each with its field

    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("steps:\n  - normalize: {collapse_whitespace: true}\n  - exact_dedup: {}\n"
                        "split: {validation_ratio: 0.2, test_ratio: 0.1, seed: 1}\n")
    run = ok_json(cli, "datasets", "curate", version, "-f", str(pipeline))
    assert run["state"] == "OPERATION_STATE_SUCCEEDED" and [s["step"] for s in run["steps"]][:2] == [
        "normalize", "exact_dedup"]
    curated = run["output_version_id"]
    code, out, _ = cli("datasets", "upload", str(data), "--name", "cars-curated", "--curate", str(pipeline))
    assert code == 0 and "cars-curated" in out

    names = {d["name"] for d in ok_json(cli, "datasets", "ls")}
    assert {"cars", "cars-curated"} <= names
    code, out, _ = cli("-o", "yaml", "datasets", "show", "cars")
    shown = yaml.safe_load(out)
    assert code == 0 and shown["dataset"]["name"] == "cars" and len(shown["versions"]) >= 2
    code, out, _ = cli("datasets", "show", curated)
    assert code == 0 and "exact_dedup" in out and "validation=" in out
    assert len(ok_json(cli, "datasets", "preview", curated, "--limit", "3")) == 3
    code, out, _ = cli("datasets", "preview", curated, "--split", "validation", "--limit", "2")
    assert code == 0 and "user:" in out

    png = tmp_path / "stats.png"
    stats = ok_json(cli, "datasets", "stats", curated, "--plot", str(png))
    assert stats["row_count"] > 0 and stats["token_length_histogram"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = tmp_path / "stats.html"
    assert cli("datasets", "stats", curated, "--plot", str(html))[0] == 0
    assert 'id="token-hist' in html.read_text()

    rejected = ok_json(cli, "datasets", "rejects", version)
    assert sorted(r["row"] for r in rejected) == [28, 29]
    code, out, _ = cli("datasets", "rejects", curated)
    assert code == 0

    assert ok_json(cli, "datasets", "rm", "cars-curated", "--yes") == {"deleted": "cars-curated"}
    code, out, err = cli("datasets", "show", "cars-curated")
    assert code == 1 and "NOT_FOUND" in err and not out


def test_bad_requests_are_listed_by_field_with_the_fix(cli, tmp_path, trained):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({**job_spec(trained.version), "hyperparameters": {"epochs": 2, "max_steps": 3},
                                    "resources": {"zero_stage": 7}}))
    code, out, err = cli("jobs", "create", "-f", str(spec))
    assert code == 1 and not out
    assert "INVALID_ARGUMENT" in err and "fix these fields" in err
    assert "• hyperparameters.max_steps" in err and "• resources.zero_stage" in err
    code, out, err = cli("-o", "json", "jobs", "create", "-f", str(spec))
    body = json.loads(err)["error"]
    assert code == 1 and body["code"] == "INVALID_ARGUMENT"
    assert {"hyperparameters.max_steps", "resources.zero_stage"} <= {v["field"] for v in body["violations"]}
    spec.write_text("model: {name: tiny-base}\ndata: {train: {path: local.jsonl}}\nhyperparams: {}\n")
    code, _, err = cli("jobs", "create", "-f", str(spec))  # caught before any call, same rendering
    assert code == 1 and "• data.train.path" in err and "tuneforge datasets upload" in err and "• hyperparams" in err


def test_jobs_commands(cli, tmp_path, trained):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({**job_spec(trained.version, steps=2, every=2), "suffix": "cli-job"}))
    created = ok_json(cli, "jobs", "create", "-f", str(spec))
    job_id = created["id"]
    code, out, err = cli("jobs", "watch", job_id)
    assert code == 0, out + err
    assert "status RUNNING" in out and "step 2/2 loss" in out and "checkpoint ckpt_" in out
    assert f"job {job_id} SUCCEEDED" in out

    listed = ok_json(cli, "jobs", "ls")
    assert [j["id"] for j in listed][:2] == [job_id, trained.job.id]
    assert {j["id"] for j in ok_json(cli, "jobs", "ls", "--status", "succeeded", "--label", "suite=client")} >= {
        job_id, trained.job.id}
    assert ok_json(cli, "jobs", "ls", "--status", "running") == []
    code, out, _ = cli("jobs", "ls")
    assert code == 0 and "cli-job" in out and "succeeded" in out

    got = ok_json(cli, "jobs", "get", trained.job.id)
    assert set(got) == {f.name for f in tr.Job.DESCRIPTOR.fields}  # the stable shape: every proto field, snake_case
    assert got["status"] == "JOB_STATUS_SUCCEEDED" and got["current_step"] == 6
    code, out, _ = cli("jobs", "get", trained.job.id)
    assert code == 0 and "6/6" in out and trained.job.result_checkpoint_id in out

    assert ok_json(cli, "jobs", "cancel", job_id)["status"] == "JOB_STATUS_SUCCEEDED"  # finished: left as is
    assert [c["step"] for c in ok_json(cli, "jobs", "checkpoints", trained.job.id)] == [3, 6]

    code, out, _ = cli("jobs", "metrics", trained.job.id)
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["step"] for r in records if r["loss"]] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if r["eval_loss"]] == [3, 6] and all(r["time"] for r in records)
    assert ok_json(cli, "jobs", "metrics", trained.job.id) == records
    csv_file = tmp_path / "metrics.csv"
    assert cli("jobs", "metrics", trained.job.id, "--out", str(csv_file))[0] == 0
    assert csv_file.read_text().splitlines()[0].startswith("sequence,time,step,loss,learning_rate")

    html, png = tmp_path / "job.html", tmp_path / "job.png"
    code, out, err = cli("jobs", "report", trained.job.id, "--out", str(html), "--png", str(png))
    assert code == 0, out + err
    text = html.read_text()
    for gid in ("loss-curve", "eval-loss-curve", "lr-curve", "tokens-curve", "checkpoint-0", "checkpoint-1"):
        assert f'id="{gid}"' in text, gid
    assert "<script" not in text and "http" not in text.split("<svg", 1)[0]  # self-contained
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_eval_commands(cli, tmp_path, trained):
    ev_id = trained.evaluation.id
    assert [e["id"] for e in ok_json(cli, "eval", "ls")] == [ev_id]
    code, out, _ = cli("eval", "show", ev_id)
    assert code == 0 and "perplexity" in out and "rouge1" in out
    cmp = ok_json(cli, "eval", "compare", ev_id)
    assert {c["name"] for c in cmp["comparisons"]} >= {"perplexity", "rouge1"} and cmp["summary"]
    code, out, _ = cli("eval", "compare", ev_id)
    assert code == 0 and "delta" in out and cmp["summary"][:30] in out

    pairs_file = tmp_path / "pairs.jsonl"
    code, _, err = cli("eval", "pairs", "export", ev_id, "--out", str(pairs_file))
    pairs = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    assert code == 0 and pairs and {"pair_id", "prompt", "left", "right"} <= set(pairs[0])
    code, out, err = cli("eval", "rate", ev_id, "--limit", "3", "--rater", "ann", stdin="l\nr\nt\n")
    assert code == 0 and "recorded 3 ratings" in out, out + err
    win = ok_json(cli, "eval", "winrates", ev_id)
    assert win["ratings"] == 3 and 0 <= win["tie_rate"] <= 1

    html, png = tmp_path / "eval.html", tmp_path / "eval.png"
    assert cli("eval", "report", ev_id, "--out", str(html), "--png", str(png))[0] == 0
    text = html.read_text()
    assert 'id="metric-perplexity-model' in text and 'id="metric-perplexity-baseline' in text
    assert "<th>fine-tuned</th>" in text and png.exists()

    created = ok_json(cli, "eval", "create", "--model", f"{trained.job.id}@latest", "--dataset",
                      f"{trained.version}:test", "--metric", "perplexity", "--max-samples", "4")
    assert created["state"] == "OPERATION_STATE_SUCCEEDED"
    assert "perplexity" in {m["name"] for m in created["results"][0]["metrics"]}


def test_ckpt_commands(cli, tmp_path, trained):
    job_id, result = trained.job.id, trained.job.result_checkpoint_id
    listed = ok_json(cli, "ckpt", "ls", job_id)
    assert [m["step"] for m in listed] == [3, 6]
    by_metric = ok_json(cli, "ckpt", "ls", job_id, "--by", "eval_loss")
    assert by_metric[0]["metrics"]["eval_loss"] <= by_metric[-1]["metrics"]["eval_loss"]
    code, out, _ = cli("ckpt", "show", result)
    assert code == 0 and "adapter_model.safetensors" in out and "tiny-base" in out

    dest = tmp_path / "dl"
    got = ok_json(cli, "ckpt", "download", result, str(dest))
    assert got["checkpoint_id"] == result
    assert all((dest / f["path"]).stat().st_size == f["size"] for f in got["files"])

    exported = ok_json(cli, "ckpt", "export", result, "--format", "adapter")
    assert exported["uri"].startswith("file://") and exported["files"]

    first = listed[0]["checkpoint_id"]
    assert ok_json(cli, "ckpt", "alias", job_id, "production", first)["checkpoint_id"] == first
    aliases = {a["name"]: a["checkpoint_id"] for a in ok_json(cli, "ckpt", "alias", job_id)}
    assert aliases["production"] == first and "latest" in aliases

    assert ok_json(cli, "ckpt", "pin", first, "--holder", "me")["pinned"] is True
    assert ok_json(cli, "ckpt", "pin", first, "--holder", "me", "--release")["released"] is True


def test_config_and_completion(cli, platform):
    shown = ok_json(cli, "config", "show")
    assert shown["token"] == "set" and shown["addresses"] == platform.addresses
    assert platform.token not in json.dumps(shown)
    code, out, _ = cli("--show-completion", "bash")
    assert code == 0 and "_TUNEFORGE_COMPLETE" in out.upper()
