"""Curation while ingesting (``feed.CurationFeed``): same result as ingest-then-curate, and every
failure on either side stops both threads and surfaces the right error."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneforge.common.errors import InvalidInput, NotFound, ResourceExhausted
from tuneforge.datasets.domain import config as cfg
from tuneforge.datasets.domain.ingest import IngestLimits, IngestOptions, ValidationPolicy, ingest_file
from tuneforge.datasets.domain.pipeline import run_pipeline
from tuneforge.datasets.domain.shards import iter_records

STEPS = cfg.PipelineConfig((cfg.Normalize(), cfg.ExactDedup()), cfg.SplitConfig(0.1, 0.1, seed=3))


def _write(path: Path, rows: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = ["alpha", "beta", "  gamma", "e\u0301t\u00e9", "tab\there", "delta", "x  y"]
    lines = []
    for i in range(rows):
        if i and rng.random() < 0.2:
            lines.append(lines[rng.randrange(len(lines))])  # an exact duplicate
            continue
        row = {"instruction": " ".join(rng.choices(words, k=3)) + f" {i}", "input": "",
               "output": " ".join(rng.choices(words, k=6)), "category": rng.choice(["a", "b"])}
        if rng.random() < 0.02:
            row["output"] = ""  # invalid: skipped under SKIP_INVALID
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def _curation_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ingest-curation"]


@pytest.mark.parametrize("fast", [True, False])
def test_one_pass_equals_ingest_then_curate(tmp_path: Path, fast: bool) -> None:
    source = _write(tmp_path / "d.jsonl", 3000)
    options = IngestOptions("d.jsonl", policy=ValidationPolicy.SKIP_INVALID)
    raw = ingest_file(source, options, tmp_path / "raw", fast_path=fast)
    two = run_pipeline(raw.shards.files, STEPS, tmp_path / "cur", eval_records=lambda ids: ())
    one = ingest_file(source, options, tmp_path / "one", fast_path=fast, curation=STEPS)
    assert one.curation is not None
    assert one.shards.content_hash == two.shards.content_hash
    assert one.shards.rows == two.shards.rows < raw.shards.rows
    assert one.shards.split_counts == two.shards.split_counts
    assert [c.as_dict() for c in one.curation.steps] == [c.as_dict() for c in two.steps]
    assert (one.rows_read, one.rows_accepted, one.rows_rejected) == (raw.rows_read, raw.shards.rows, raw.rows_rejected)
    assert list(iter_records(one.shards.files)) == list(iter_records(two.shards.files))
    assert not _curation_threads()


def test_pipeline_failure_surfaces_in_the_ingest_and_stops_both(tmp_path: Path) -> None:
    source = _write(tmp_path / "d.jsonl", 40_000)

    def missing(ids: tuple[str, ...]) -> Iterator[dict]:
        raise NotFound(f"evaluation version {ids[0]!r} not found")

    config = cfg.PipelineConfig((cfg.Normalize(), cfg.Decontaminate(("dsv_gone",))))
    with pytest.raises(NotFound, match="dsv_gone"):
        ingest_file(source, IngestOptions("d.jsonl", policy=ValidationPolicy.SKIP_INVALID), tmp_path / "s",
                    curation=config, eval_records=missing)
    assert not _curation_threads()
    assert not list((tmp_path / "s").rglob("*.parquet"))


def test_ingest_failure_mid_file_stops_the_pipeline(tmp_path: Path) -> None:
    source = _write(tmp_path / "d.jsonl", 30_000)
    limits = IngestLimits(max_rows=20_000)
    with pytest.raises(ResourceExhausted, match="more than 20000 rows"):
        ingest_file(source, IngestOptions("d.jsonl", policy=ValidationPolicy.SKIP_INVALID), tmp_path / "s",
                    limits=limits, curation=STEPS)
    assert not _curation_threads()


def test_reject_upload_policy_refuses_before_publishing_anything(tmp_path: Path) -> None:
    source = _write(tmp_path / "d.jsonl", 500)
    with pytest.raises(InvalidInput) as caught:
        ingest_file(source, IngestOptions("d.jsonl"), tmp_path / "s", curation=STEPS)
    assert caught.value.violations and caught.value.violations[0].field.startswith("rows[")
    assert not _curation_threads()


def test_guard_trips_after_the_whole_input(tmp_path: Path) -> None:
    source = _write(tmp_path / "d.jsonl", 2000)
    config = cfg.PipelineConfig((cfg.LengthFilter(min_chars=10_000),))
    with pytest.raises(ResourceExhausted, match="would remove"):
        ingest_file(source, IngestOptions("d.jsonl", policy=ValidationPolicy.SKIP_INVALID), tmp_path / "s",
                    curation=config)
    assert not _curation_threads()
