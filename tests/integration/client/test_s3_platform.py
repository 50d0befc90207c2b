"""The client flow on the real S3 server: the job's metrics file and TensorBoard event files land in the
bucket and come back through the API (SDK and CLI); evaluation samples reach the HTML report although
the client cannot read the store; integrations are refused by secret name with the fix."""

from __future__ import annotations

import json
from urllib.parse import urlparse

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.integration.client.conftest import BASE, job_spec, ok_json
from tuneforge.client import errors
from tuneforge.training.v1 import training_pb2 as tr

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PLATFORM_STORE = "s3"  # read by the platform fixture: every service on one bucket of the real S3 server


def _bucket_object(platform, s3_server, key: str) -> bytes:
    """An object read straight from the S3 server, behind the services' back."""
    bucket = urlparse(platform.store["object_store_uri"]).netloc
    response = s3_server.client().get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def _bucket_keys(platform, s3_server, prefix: str) -> list[str]:
    bucket = urlparse(platform.store["object_store_uri"]).netloc
    return sorted(o.object_name for o in s3_server.client().list_objects(bucket, prefix=prefix, recursive=True))


def _tfevent_scalars(data: bytes) -> dict[str, list[tuple[int, float]]]:
    """Scalars of one TensorBoard event file (TFRecord framing: length 8, crc 4, payload, crc 4)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 8], "little")
        event = Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 16 + length
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_the_metrics_file_is_in_the_bucket_and_downloads_through_sdk_and_cli(platform, trained, s3_server, cli,
                                                                            tmp_path):
    with platform.client() as c:
        job = c.training.GetJob(tr.GetJobRequest(job_id=trained.job.id)).job
        assert job.metrics_file == f"tenants/acme/jobs/{job.id}/metrics.jsonl"
        stored = _bucket_object(platform, s3_server, job.metrics_file)
        assert c.download_metrics(job.id, tmp_path / "sdk.jsonl") == stored
        assert (tmp_path / "sdk.jsonl").read_bytes() == stored
        records = c.job_metrics(job.id)
    # One record per METRICS event the job streamed, the same values, in order.
    streamed = [e for e in trained.events if e.WhichOneof("payload") == "metrics"]
    assert [r["sequence"] for r in records] == [e.sequence for e in streamed]
    assert [r["step"] for r in records if r["loss"]] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if r["eval_loss"]] == [3, 6]
    assert [r["loss"] for r in records] == pytest.approx([e.metrics.loss for e in streamed])

    code, _, err = cli("jobs", "metrics", job.id, "--out", str(tmp_path / "cli.jsonl"))
    assert code == 0 and (tmp_path / "cli.jsonl").read_bytes() == stored, err
    assert ok_json(cli, "jobs", "metrics", job.id) == records
    assert ok_json(cli, "jobs", "get", job.id)["metrics_file"] == job.metrics_file

    with platform.client(platform.other_token) as other, pytest.raises(errors.NotFound):
        other.download_metrics(job.id)


def test_tensorboard_event_files_are_in_the_bucket_with_the_jobs_curves(platform, trained, s3_server):
    with platform.client() as c:
        job = c.training.GetJob(tr.GetJobRequest(job_id=trained.job.id)).job
    assert [i.kind for i in job.integrations] == [tr.INTEGRATION_KIND_TENSORBOARD]
    assert job.tensorboard_logdir == f"tenants/acme/jobs/{job.id}/tensorboard/"
    keys = _bucket_keys(platform, s3_server, job.tensorboard_logdir)
    assert keys and all(k.startswith(f"{job.tensorboard_logdir}{job.id}/events.out.tfevents.") for k in keys), keys
    scalars: dict[str, list[tuple[int, float]]] = {}
    for key in keys:
        for tag, points in _tfevent_scalars(_bucket_object(platform, s3_server, key)).items():
            scalars.setdefault(tag, []).extend(points)
    records = [json.loads(line) for line in _bucket_object(platform, s3_server, job.metrics_file).splitlines()]
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in records if r["loss"]], rel=1e-5)
    assert [s for s, _ in scalars["eval/eval_loss"]] == [3, 6]


def test_the_evaluation_report_shows_samples_read_from_the_bucket(platform, trained, tmp_path, cli):
    from tuneforge.cli.report import eval_report

    with platform.client() as c:
        samples = list(c.list_evaluation_samples(trained.evaluation.id))
        assert len(samples) >= 2 and all(s.prompt and s.reference for s in samples)
        assert list(c.list_evaluation_samples(trained.evaluation.id, page_size=1)) == samples  # page by page
    with platform.client(platform.other_token) as other, pytest.raises(errors.NotFound):
        list(other.list_evaluation_samples(trained.evaluation.id))
    with platform.client() as c:
        assert all(s.dataset_version_id == trained.version for s in samples)
        html = eval_report(c, trained.evaluation.id, tmp_path / "eval.html").read_text()
    assert ok_json(cli, "eval", "samples", trained.evaluation.id, "--limit", "2") == [
        {"dataset_version_id": s.dataset_version_id, "index": s.index, "prompt": s.prompt, "model_output": s.model_output,
         "baseline_output": s.baseline_output, "reference": s.reference} for s in samples[:2]]
    code, out, _ = cli("eval", "samples", trained.evaluation.id)
    assert code == 0 and "fine-tuned" in out and samples[0].reference in out
    table = html.split("<h2>Samples</h2>", 1)[1]
    assert "class='sample'" in table and "cannot read" not in table
    import html as html_lib

    for s in samples:
        assert html_lib.escape(s.prompt) in table


def test_integrations_are_refused_by_field_with_the_fix(platform, trained):
    spec = {**job_spec(trained.version), "reporting": {"integrations": [
        {"kind": "mlflow", "secret": "mlflow-team"},
        {"kind": "wandb", "secret": "wandb-other"},  # acme2's secret: does not exist for acme
        {"kind": "tensorboard", "secret": "wandb-team"},
    ]}}
    with platform.client() as c, pytest.raises(errors.InvalidArgument) as info:
        c.create_job(spec)
    by_field = {v.field: v.description for v in info.value.violations}
    assert "'mlflow' package" in by_field["integrations[0].kind"] and "pip install mlflow" in by_field[
        "integrations[0].kind"]
    assert "'wandb' package" in by_field["integrations[1].kind"]
    assert "no integration secret named 'wandb-other'" in by_field["integrations[1].secret"]
    assert "mlflow-team, wandb-empty, wandb-team" in by_field["integrations[1].secret"]
    assert "takes no secret" in by_field["integrations[2].secret"]
    assert "value-never-shown" not in str(info.value)

    def refused(*integrations: tr.Integration) -> dict[str, str]:
        with platform.client() as c, pytest.raises(errors.InvalidArgument) as info:
            c.create_job(tr.CreateJobRequest(base_model=BASE, method=tr.METHOD_LORA, objective=tr.OBJECTIVE_SFT,
                                             dataset_version_id=trained.version, integrations=integrations))
        return {v.field: v.description for v in info.value.violations}

    board = tr.Integration(kind=tr.INTEGRATION_KIND_TENSORBOARD)
    assert "at most once" in refused(board, board)["integrations"]
    assert "'tensorboard', 'mlflow' or 'wandb'" in refused(board, tr.Integration(project="x"))["integrations[1].kind"]
