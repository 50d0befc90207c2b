"""``tuneforge jobs estimate -f job.yaml`` and ``Client.estimate_job``/``AsyncClient.estimate_job``
against the real services: a plan comes back and no job is created."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.integration.client.conftest import job_spec, write_rows
from tuneforge.cli.__main__ import main
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.v1 import datasets_pb2 as ds

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_estimate_from_the_cli_and_both_sdks_creates_nothing(platform, tmp_path, monkeypatch, capsys):
    with platform.client() as c:
        up = c.upload(write_rows(tmp_path / "colours.jsonl"), "estimate-colours",
                      validation_policy=ds.VALIDATION_POLICY_SKIP_INVALID)
        run = c.wait(c.curate(up.version.id, [ds.CurationStep(exact_dedup=ds.ExactDedupStep())],
                              split=ds.SplitConfig(validation_ratio=0.2, seed=3)), timeout=300)
        assert run.state == common_pb2.OPERATION_STATE_SUCCEEDED, run.error.message
        jobs_before = [j.id for j in c.list_jobs()]
        doc = job_spec(run.output_version_id, steps=5)
        got = c.estimate_job(doc)
        assert got.fits and got.memory_known and got.total_steps == 5 and got.memory_per_device.total > 0

    from tuneforge.client.aio import AsyncClient

    async def estimate_async():
        async with AsyncClient.connect(platform.addresses, platform.token, config_file=None) as ac:
            return await ac.estimate_job(doc)

    assert asyncio.run(estimate_async()).memory_per_device.total == got.memory_per_device.total

    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(doc))
    for key, value in platform.env().items():
        if key.startswith("TUNEFORGE_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code = main(["-o", "json", "jobs", "estimate", "-f", str(spec)])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed["fits"] is True and printed["total_steps"] == 5
    assert printed["memory_per_device"]["total"] == got.memory_per_device.total
    code = main(["jobs", "estimate", "-f", str(spec)])
    table = capsys.readouterr().out
    assert code == 0 and "fits" in table and "per CPU" in table
    with platform.client() as c:
        assert [j.id for j in c.list_jobs()] == jobs_before  # nothing was created
