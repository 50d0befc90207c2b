"""Prompt-only records (online RL): conversion, row-by-row validation naming row and field, ingest
to shards with the reference answer, statistics, and shards written before the answer column."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneforge.common.errors import InvalidInput
from tuneforge.datasets.domain.formats import DatasetFormat, convert_row
from tuneforge.datasets.domain.ingest import IngestOptions, ValidationPolicy, ingest_file
from tuneforge.datasets.domain.records import RECORD_SCHEMA
from tuneforge.datasets.domain.rejects import RowError
from tuneforge.datasets.domain.shards import iter_records, iter_tables
from tuneforge.engine.data.records import RecordKind, records_from_dicts


def _convert(row: dict) -> dict:
    return convert_row(row, DatasetFormat.PROMPT, source="f", row_number=1)


@pytest.mark.parametrize(("row", "prompt", "answer"), [
    ({"prompt": "What is 2+2?", "answer": "4"}, [{"role": "user", "content": "What is 2+2?"}], "4"),
    ({"prompt": "What is 2+2?", "answer": 4}, [{"role": "user", "content": "What is 2+2?"}], "4"),
    ({"prompt": "Say hi"}, [{"role": "user", "content": "Say hi"}], None),
    ({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}], "solution": "s"},
     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}], "s"),
    ({"prompt": json.dumps([{"role": "user", "content": "q"}]), "ground_truth": "g"}, [{"role": "user", "content": "q"}], "g"),
])
def test_prompt_rows_convert(row: dict, prompt: list, answer: str | None) -> None:
    record = _convert(row)
    assert (record["kind"], record["prompt"], record["answer"]) == ("prompt", prompt, answer)
    assert record["messages"] is None and record["chosen"] is None


@pytest.mark.parametrize(("row", "field", "fix"), [
    ({"prompt": ""}, "prompt", "give the prompt text"),
    ({"answer": "4"}, "prompt", "is missing"),
    ({"prompt": "q", "answer": {"value": 4}}, "answer", "must be a string"),
    ({"prompt": "q", "answer": True}, "answer", "must be a string"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "prompt[1].role",
     "must end with a user turn"),
    ({"prompt": [{"role": "system", "content": "s"}]}, "prompt", "only a system message"),
    ({"prompt": [{"role": "robot", "content": "q"}]}, "prompt[0].role", "use one of"),
])
def test_bad_prompt_rows_name_the_field_and_the_fix(row: dict, field: str, fix: str) -> None:
    with pytest.raises(RowError) as caught:
        _convert(row)
    assert caught.value.field == field and fix in caught.value.reason


def test_ingest_names_every_bad_row_and_stores_answers(tmp_path: Path) -> None:
    rows = [{"prompt": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(4)]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, {"prompt": "", "answer": "x"}, {"prompt": "q", "answer": [1]}]))
    with pytest.raises(InvalidInput) as caught:
        ingest_file(path, IngestOptions("p.jsonl", format=DatasetFormat.PROMPT), tmp_path / "reject")
    fields = [v.field for v in caught.value.violations]
    assert any("5" in f and f.endswith("prompt") for f in fields) and any("6" in f and f.endswith("answer") for f in fields), fields

    result = ingest_file(path, IngestOptions("p.jsonl", policy=ValidationPolicy.SKIP_INVALID), tmp_path / "ok")
    assert (result.format, result.shards.rows, result.rows_rejected) == (DatasetFormat.PROMPT, 4, 2)
    stored = list(iter_records(result.shards.files))
    assert [r["answer"] for r in stored] == ["0", "2", "4", "6"] and {r["kind"] for r in stored} == {"prompt"}
    # The engine reads the shards' rows as prompt records with their answers.
    records = records_from_dicts(stored)
    assert records[1].kind is RecordKind.PROMPT and records[1].answer == "2"
    assert records[1].prompt[0].content == "What is 1+1?"


def test_shards_written_before_the_answer_column_read_back(tmp_path: Path) -> None:
    old = pa.schema([f for f in RECORD_SCHEMA if f.name != "answer"])
    table = pa.Table.from_pylist([{"kind": "text", "text": "hello", "provenance": {"source": "f", "row": 1,
                                                                                  "augmented": False, "flags": []}}],
                                 schema=old)
    pq.write_table(table, tmp_path / "old.parquet")
    got = next(iter_tables([tmp_path / "old.parquet"]))
    assert got.schema.equals(RECORD_SCHEMA) and got.to_pylist()[0]["answer"] is None
