"""KTO's labelled completions (prompt, completion, label) and preference margins in the datasets domain:
detection, row-by-row validation naming row and field, CSV spellings, curation and stats."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tuneforge.common.errors import InvalidInput
from tuneforge.datasets.domain import config as cfg
from tuneforge.datasets.domain.formats import DatasetFormat, convert_row, detect_format
from tuneforge.datasets.domain.ingest import IngestOptions, ValidationPolicy, ingest_file
from tuneforge.datasets.domain.pipeline import run_pipeline
from tuneforge.datasets.domain.records import RECORD_SCHEMA, conform
from tuneforge.datasets.domain.rejects import RowError
from tuneforge.datasets.domain.shards import iter_records
from tuneforge.datasets.domain.stats import compute_stats
from tuneforge.datasets.domain.tokens import token_counter


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(("row", "fmt"), [
    ({"prompt": "q", "completion": "a", "label": True}, DatasetFormat.KTO),
    ({"prompt": "q", "completion": "a"}, DatasetFormat.ALPACA),  # no label: OpenAI legacy prompt/completion
    ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": 1.0}, DatasetFormat.PREFERENCE),
])
def test_detection(row: dict, fmt: DatasetFormat) -> None:
    assert detect_format(row) is fmt


def test_labelled_row_becomes_a_labelled_record() -> None:
    row = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
           "completion": [{"role": "assistant", "content": "Hello."}], "label": "false"}
    record = convert_row(row, DatasetFormat.KTO, source="k.jsonl", row_number=3)
    assert record["kind"] == "labelled" and record["completion"] == "Hello." and record["label"] is False
    assert record["prompt"][-1] == {"role": "user", "content": "Hi"} and record["provenance"]["row"] == 3


@pytest.mark.parametrize(("row", "field", "words"), [
    ({"prompt": "q", "completion": "a", "label": "maybe"}, "label", "true (desirable"),
    ({"prompt": "q", "completion": "a", "label": 2}, "label", "true (desirable"),
    ({"prompt": "q", "completion": "a", "label": None}, "label", "missing"),
    ({"prompt": "q", "completion": " ", "label": True}, "completion", "empty"),
    ({"prompt": [{"role": "assistant", "content": "x"}], "completion": "a", "label": True}, "prompt[0].role",
     "end with a user turn"),
])
def test_bad_labelled_rows_name_the_field(row: dict, field: str, words: str) -> None:
    with pytest.raises(RowError) as info:
        convert_row(row, DatasetFormat.KTO, source="k.jsonl", row_number=1)
    assert info.value.field == field and words in info.value.reason


@pytest.mark.parametrize("margin", ["-1", "abc", float("nan"), True])
def test_bad_margin_is_refused(margin) -> None:
    with pytest.raises(RowError) as info:
        convert_row({"prompt": "q", "chosen": "a", "rejected": "b", "margin": margin}, DatasetFormat.PREFERENCE,
                    source="p.jsonl", row_number=1)
    assert info.value.field == "margin"


def test_ingest_reports_every_bad_row_by_number_and_field(tmp_path: Path) -> None:
    rows = [{"prompt": "q1", "completion": "a1", "label": True}, {"prompt": "q2", "completion": "a2", "label": "x"},
            {"prompt": "q3", "completion": "", "label": False}]
    with pytest.raises(InvalidInput) as info:
        ingest_file(_jsonl(tmp_path / "k.jsonl", rows), IngestOptions("k.jsonl"), tmp_path / "s")
    fields = [v.field for v in info.value.violations]
    assert fields == ["rows[2].label", "rows[3].completion"], fields


def test_csv_labels_ingest_curate_and_count(tmp_path: Path) -> None:
    path = tmp_path / "k.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "completion", "label"])
        for i in range(10):
            writer.writerow([f"question {i}", f"answer {i}", "true" if i % 3 else "false"])
        writer.writerow(["question 1", "answer 1", "true"])  # an exact duplicate
        writer.writerow(["question 1", "answer 1", "false"])  # the same answer labelled the other way: kept
    raw = ingest_file(path, IngestOptions("k.csv", policy=ValidationPolicy.SKIP_INVALID), tmp_path / "raw")
    assert raw.format is DatasetFormat.KTO and raw.shards.kinds == {"labelled": 12}
    curated = run_pipeline(raw.shards.files, cfg.PipelineConfig((cfg.Normalize(), cfg.ExactDedup()),
                                                                cfg.SplitConfig(0.2, 0.0, seed=1)),
                           tmp_path / "cur", eval_records=lambda ids: ())
    records = list(iter_records(curated.shards.files))
    assert len(records) == 11 and {r["split"] for r in records} == {"train", "validation"}
    stats = compute_stats(curated.shards.files, token_counter(""))
    assert stats["label_counts"] == {"desirable": 6, "undesirable": 5}


def test_shards_written_before_the_new_columns_read_back_with_nulls() -> None:
    import pyarrow as pa

    old = pa.table({name: pa.nulls(2, RECORD_SCHEMA.field(name).type) for name in RECORD_SCHEMA.names[:9]})
    table = conform(old)
    assert table.schema.equals(RECORD_SCHEMA) and table.column("label").null_count == 2
