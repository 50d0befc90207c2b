"""The columnar fast paths give exactly what the row paths give, on clean and malformed files."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneforge.common.errors import InvalidInput
from tuneforge.datasets.domain import columnar, fastjsonl
from tuneforge.datasets.domain import ingest as ingest_module
from tuneforge.datasets.domain.formats import DatasetFormat
from tuneforge.datasets.domain.ingest import IngestOptions, IngestResult, ValidationPolicy, ingest_file
from tuneforge.datasets.domain.shards import iter_records

SKIP = ValidationPolicy.SKIP_INVALID


def _row(i: int, rng: random.Random) -> dict:
    words = ["alpha", "beta", "gamma", "délta", "e\u0301t\u00e9", "  spaced  ", "tab\there", "x \n y", "\u3000z"]
    row = {"instruction": " ".join(rng.choices(words, k=4)) + f" {i}", "input": rng.choice(["", "ctx", "  "]),
           "output": " ".join(rng.choices(words, k=8))}
    if rng.random() < 0.5:
        row["category"] = rng.choice(["qa", " code ", ""])
    if rng.random() < 0.2:
        row["task"] = "t"
    if rng.random() < 0.1:
        row["extra"] = {"nested": [1, 2, {"x": None}]}
    return row


def _ingest(path: Path, tmp: Path, name: str, fast: bool, **options) -> tuple[IngestResult | InvalidInput, list, list]:
    staging = tmp / f"{name}-{'fast' if fast else 'rows'}"
    staging.mkdir()
    opts = IngestOptions(name, **options)
    try:
        result = ingest_file(path, opts, staging, fast_path=fast)
    except InvalidInput as exc:
        return exc, [], []
    rejects = pq.read_table(result.rejected_path).to_pylist() if result.rejected_path else []
    return result, list(iter_records(result.shards.files)), rejects


class _Spy:
    """Counts the blocks the columnar path converted (and the ones it handed to the row path)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.converted = self.refused = 0
        monkeypatch.setattr(ingest_module, "convert_block", self)

    def __call__(self, *args, **kwargs):
        out = fastjsonl.convert_block(*args, **kwargs)
        self.converted += out is not None
        self.refused += out is None
        return out


def _assert_same(path: Path, tmp: Path, name: str, **options) -> IngestResult:
    fast, fast_records, fast_rejects = _ingest(path, tmp, name, True, **options)
    rows, row_records, row_rejects = _ingest(path, tmp, name, False, **options)
    if isinstance(rows, InvalidInput):
        assert isinstance(fast, InvalidInput)
        assert (fast.message, fast.violations) == (rows.message, rows.violations)
        return rows  # type: ignore[return-value]
    assert isinstance(fast, IngestResult)
    assert fast_records == row_records
    assert fast_rejects == row_rejects
    assert (fast.rows_read, fast.rows_rejected, fast.format) == (rows.rows_read, rows.rows_rejected, rows.format)
    assert fast.shards.content_hash == rows.shards.content_hash
    assert (fast.shards.rows, fast.shards.kinds) == (rows.shards.rows, rows.shards.kinds)
    return fast


MALFORMED_LINES = [
    b'{"input": "", "output": "no instruction"}',
    b'{"instruction": null, "output": "null instruction"}',
    b'{"instruction": 7, "output": "number"}',
    b'{"instruction": " \\u001c\\t", "output": "blank by Python rules"}',
    b'{"instruction": "q", "output": {"a": 1}}',
    b'{"instruction": "q", "output": "   "}',
    b'{"instruction": "q", "input": 3, "output": "a"}',
    b'{"instruction": "q", "output": "a", "category": 5}',
    b'{"instruction": "q", "output": "a", "category": ["x"]}',
    b"",
    b"   ",
    b"null",
    b"[1, 2]",
    b'"just a string"',
    b'{"instruction": "q", "output": "a"} {"instruction": "q2", "output": "a2"}',
    b'{"instruction": "q", "output": "a",}',
    b'{"instruction": "q", "output": "a", "score": NaN}',
    b'{"instruction": "q", "output": "a", "score": -Infinity}',
    b'{"instruction": "q", "output": "a", "junk": "\xff\xfe"}',
    b'{"instruction": "caf\xc3", "output": "a"}',
    b'{"instruction": "q", "output": "a", "deep": ' + b"[" * 1100 + b"]" * 1100 + b"}",
    b'{"instruction": "q", "instruction": "dup", "output": "a"}',
    b'{"instruction": "q", "output": "a", "x": 1, "x": 2}',
    b'{"instruction": "\\ud800", "output": "lone surrogate"}',
    b'{"instruction": "multi",',
    b'"output": "line"}',
    b'{"instruction": "q", "output": "' + b"long " * 300 + b'"}',
    b'{"instruction": "2020-01-01", "output": "looks like a date"}',
    b'{"instruction": "q", "output": "a"}\r',
    b"\xef\xbb\xbf{\"instruction\": \"bom\", \"output\": \"a\"}",
]


def _malformed_file(path: Path, seed: int, rows: int = 600) -> Path:
    rng = random.Random(seed)
    lines = [json.dumps(_row(i, rng), ensure_ascii=rng.random() < 0.5).encode() for i in range(rows)]
    for bad in MALFORMED_LINES:
        lines.insert(rng.randrange(len(lines)), bad)
    path.write_bytes(b"\n".join(lines) + (b"\n" if seed % 2 else b""))
    return path


@pytest.mark.parametrize("block_bytes", [0, 2048, 50_000])
def test_fast_and_row_paths_agree_on_malformed_jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     block_bytes: int) -> None:
    monkeypatch.setattr(fastjsonl, "BLOCK_BYTES", block_bytes or fastjsonl.BLOCK_BYTES)
    spy = _Spy(monkeypatch)
    path = _malformed_file(tmp_path / "data.jsonl", seed=block_bytes)
    result = _assert_same(path, tmp_path, "data.jsonl", policy=SKIP)
    if block_bytes:  # small blocks: some are clean and take the columnar path, some are refused
        assert spy.converted > 0 and spy.refused > 0
    assert result.rows_rejected >= 20  # the malformed lines above were really rejected, row by row
    assert result.shards.rows >= 600


def test_fast_path_rejects_name_rows_and_fields(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "q", "output": "a"}\n\n{"instruction": "q"}\n{"instruction": "", "output": "a"}\n')
    with pytest.raises(InvalidInput) as caught:
        ingest_file(path, IngestOptions("d.jsonl"), tmp_path / "s")
    assert [(v.field, v.description.split(":")[0]) for v in caught.value.violations] == [
        ("rows[3].output", "is missing"), ("rows[4].instruction", "is empty")]


@pytest.mark.parametrize("seed", range(6))
def test_fast_and_row_paths_agree_on_fuzzed_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    monkeypatch.setattr(fastjsonl, "BLOCK_BYTES", 2048)
    rng = random.Random(seed)
    lines = []
    for i in range(400):
        line = bytearray(json.dumps(_row(i, rng)).encode())
        for _ in range(rng.choice((1, 2)) if rng.random() < 0.05 else 0):  # delete, insert or replace a byte
            at = rng.randrange(len(line))
            op = rng.randrange(3)
            if op == 0:
                del line[at]
            elif op == 1:
                line.insert(at, rng.choice(b'{}[]",:\\ \x00\xc3nu1'))
            else:
                line[at] = rng.randrange(256)
        lines.append(bytes(line).replace(b"\n", b" "))
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    spy = _Spy(monkeypatch)
    _assert_same(path, tmp_path, "fuzz.jsonl", policy=SKIP, format=DatasetFormat.ALPACA)
    assert spy.converted > 0


@pytest.mark.parametrize(("fmt", "rows", "bad"), [
    (DatasetFormat.DOLLY, [{"instruction": "q", "context": "c", "response": "r", "category": "open_qa"},
                           {"instruction": "q", "context": None, "response": ""}], 1),
    (DatasetFormat.TEXT, [{"text": "some text"}, {"text": "  "}, {"text": 3}, {"text": "more", "task": "lm"}], 2),
])
def test_fast_path_other_formats_agree(tmp_path: Path, fmt: DatasetFormat, rows: list, bad: int) -> None:
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows * 50)
    result = _assert_same(path, tmp_path, "d.jsonl.gz", policy=SKIP)
    assert result.format is fmt and result.rows_rejected == 50 * bad


def test_oversized_line_hands_the_rest_to_the_row_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastjsonl, "BLOCK_BYTES", 1024)
    good = json.dumps({"instruction": "q", "output": "a"})
    huge = json.dumps({"instruction": "q", "output": "x" * 5000})
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([good] * 30 + [huge] + [good] * 30) + "\n")
    from tuneforge.datasets.domain.ingest import IngestLimits
    fast = ingest_file(path, IngestOptions("d.jsonl", policy=SKIP), tmp_path / "a", limits=IngestLimits(max_row_bytes=2000))
    rows = ingest_file(path, IngestOptions("d.jsonl", policy=SKIP), tmp_path / "b", limits=IngestLimits(max_row_bytes=2000),
                       fast_path=False)
    assert pq.read_table(fast.rejected_path).to_pylist() == pq.read_table(rows.rejected_path).to_pylist()
    assert pq.read_table(fast.rejected_path).column("row").to_pylist() == [31]
    assert fast.shards.content_hash == rows.shards.content_hash and fast.shards.rows == 60


def test_python_whitespace_set_is_complete() -> None:
    assert set(columnar.PY_WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}


def test_blocks_cover_every_line_once(tmp_path: Path) -> None:
    data = b"".join(b'{"a": %d}\n' % i + (b"\n" if i % 7 == 0 else b"") for i in range(500)) + b'{"a": "last"}'
    import io
    blocks = list(fastjsonl.iter_blocks(io.BytesIO(data), max_row_bytes=1 << 20, block_bytes=333))
    assert b"".join(b.data for b in blocks) == data
    for block in blocks:
        assert data.count(b"\n", 0, data.index(block.data)) + 1 == block.first_line


def _records_of_every_kind(n: int, seed: int) -> list[dict]:
    from tuneforge.datasets.domain.records import RecordKind, new_record
    rng = random.Random(seed)
    pieces = ["Hello", "  world ", "e\u0301", "\u00e9", "\t", " \n", "\u3000", "\u00a0x", "\x1c", "A", "a", "\u2028",
              "x  \t y", "\u1e9b\u0323", ""]

    def text() -> str:
        return "".join(rng.choices(pieces, k=rng.randint(1, 6)))

    out = []
    for i in range(n):
        kind = rng.choice(list(RecordKind))
        msgs = [{"role": r, "content": text()} for r in ("system", "user", "assistant")[rng.randint(0, 1):]]
        fields = {
            RecordKind.CHAT: {"messages": msgs}, RecordKind.INSTRUCTION: {"messages": msgs[-2:]},
            RecordKind.PREFERENCE: {"prompt": msgs[:-1], "chosen": text(), "rejected": rng.choice([text(), ""])},
            RecordKind.TEXT: {"text": text()},
            RecordKind.LABELLED: {"prompt": msgs[:-1], "completion": text(), "label": rng.random() < 0.5},
            RecordKind.PROMPT: {"prompt": msgs[:-1], "answer": rng.choice([text(), None])},
        }[kind]
        out.append(new_record(kind, source="s.jsonl", row=i + 1, category=rng.choice([None, "qa"]), **fields))
        if rng.random() < 0.3 and out:  # exact and near-exact (case) duplicates
            dup = dict(rng.choice(out))
            dup["provenance"] = {**dup["provenance"], "row": i + 1000}
            out.append(dup)
    return out


@pytest.mark.parametrize(("collapse", "ignore_case"), [(True, False), (False, False), (True, True)])
def test_columnar_normalize_and_dedup_match_the_row_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         collapse: bool, ignore_case: bool) -> None:
    from tuneforge.datasets.domain import config as cfg
    from tuneforge.datasets.domain.pipeline import run_pipeline
    from tuneforge.datasets.domain.shards import ShardWriter
    from tuneforge.datasets.domain.steps import ExactDedupStep, NormalizeStep

    writer = ShardWriter(tmp_path / "in", rows_per_shard=3000)
    writer.add_many(_records_of_every_kind(9000, seed=int(collapse) + 2 * int(ignore_case)))
    inputs = writer.close().files
    config = cfg.PipelineConfig((cfg.Normalize(collapse), cfg.ExactDedup(ignore_case)), max_removal_fraction=0.9)
    fast = run_pipeline(inputs, config, tmp_path / "fast", eval_records=lambda ids: [])
    monkeypatch.setattr(NormalizeStep, "columnar", False)
    monkeypatch.setattr(ExactDedupStep, "columnar", False)
    rows = run_pipeline(inputs, config, tmp_path / "rows", eval_records=lambda ids: [])
    assert [c.as_dict() for c in fast.steps] == [c.as_dict() for c in rows.steps]
    assert fast.steps[0].rows_modified > 100 and fast.steps[1].rows_in > fast.steps[1].rows_out
    assert list(iter_records(fast.shards.files)) == list(iter_records(rows.shards.files))
    assert fast.shards.content_hash == rows.shards.content_hash
    assert pq.read_table(fast.rejected_path).to_pylist() == pq.read_table(rows.rejected_path).to_pylist()


def test_content_keys_match_content_key_with_null_and_empty_parts() -> None:
    from tuneforge.datasets.domain.records import RecordKind, content_key, new_record, to_table
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]
    records = [new_record(RecordKind.TEXT, source="s", row=1),
               new_record(RecordKind.CHAT, source="s", row=2, messages=msgs),
               new_record(RecordKind.CHAT, source="s", row=3, messages=[]),
               new_record(RecordKind.PREFERENCE, source="s", row=4, prompt=msgs[:1], chosen="", rejected="r"),
               new_record(RecordKind.TEXT, source="s", row=5, text="t"),
               new_record(RecordKind.TEXT, source="s", row=6)]
    assert columnar.content_keys(to_table(records)).to_pylist() == [content_key(r) for r in records]


def test_a_failed_ingest_leaves_no_writer_thread_running(tmp_path: Path) -> None:
    import threading

    from tuneforge.common.errors import ResourceExhausted
    from tuneforge.datasets.domain.ingest import IngestLimits
    path = tmp_path / "d.jsonl"
    path.write_text("".join(f'{{"instruction": "q{i}", "output": "a"}}\n' for i in range(200_000)))
    with pytest.raises(ResourceExhausted, match="more than 150000 rows"):  # raised mid-file, after writes
        ingest_file(path, IngestOptions("d.jsonl"), tmp_path / "s", limits=IngestLimits(max_rows=150_000))
    assert not [t for t in threading.enumerate() if t.name.startswith("shard-writer")]


def test_fast_path_agrees_on_archives_and_a_declared_category_field(tmp_path: Path) -> None:
    import zipfile
    rng = random.Random(5)
    good = [json.dumps({**_row(i, rng), "topic": rng.choice(["x", " y ", ""])}) for i in range(300)]
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.jsonl", "\n".join(good[:150]) + "\n")
        archive.writestr("b.jsonl", "\n".join([*good[150:], '{"instruction": 1}', "not json"]) + "\n")
    result = _assert_same(path, tmp_path, "two.zip", policy=SKIP, category_field="topic")
    assert result.rows_rejected == 2 and result.sources == ["two.zip/a.jsonl", "two.zip/b.jsonl"]


def test_space_run_detection_marks_exactly_the_strings_that_can_collapse() -> None:
    texts = ["a b", "a  b", "a\tb", "a \nb", None, "", "end\t", " ", "x", "ends with space ", "x", " starts",
             "\u00e9  \u00e9"]
    values = pa.array(texts, pa.string())
    expected = [t is not None and ("  " in t or "\t" in t or " \n" in t) for t in texts]
    assert columnar._has_space_runs(values).tolist() == expected
    assert columnar._has_space_runs(values.slice(3, 5)).tolist() == expected[3:8]
    # A pair split across two strings marks the first: harmless (its regex changes nothing).
    assert columnar._has_space_runs(pa.array(["a ", " b"])).tolist() == [True, False]


def test_separated_content_keys_are_the_content_key_behind_a_separator() -> None:
    from tuneforge.datasets.domain.records import RecordKind, content_key, new_record, to_table
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]
    records = [new_record(RecordKind.TEXT, source="s", row=1),
               new_record(RecordKind.CHAT, source="s", row=2, messages=msgs),
               new_record(RecordKind.CHAT, source="s", row=3, messages=[]),
               new_record(RecordKind.PREFERENCE, source="s", row=4, prompt=msgs[:1], chosen="", rejected="r"),
               new_record(RecordKind.TEXT, source="s", row=5, text="")]
    expected = ["\x1f" + content_key(r) if content_key(r) else "" for r in records]
    assert columnar.separated_content_keys(to_table(records)).to_pylist() == expected
    assert expected[0] == "" and expected[4] == "\x1ftext\x1f"


def test_exact_dedup_shares_its_index_between_table_and_row_batches() -> None:
    from tuneforge.datasets.domain import config as cfg
    from tuneforge.datasets.domain.records import RecordKind, new_record, to_table
    from tuneforge.datasets.domain.steps import ExactDedupStep

    def rec(row: int, text: str) -> dict:
        return new_record(RecordKind.TEXT, source="s", row=row, text=text)

    removed: list[tuple[int, str]] = []
    step = ExactDedupStep(lambda r, f, reason: removed.append((r["provenance"]["row"], reason)), cfg.ExactDedup())
    # In-batch repeats (the earliest wins), then a row batch repeating rows of the table batch.
    table_out = step.process_table(to_table([rec(1, "a"), rec(2, "b"), rec(3, "a"), rec(4, "a"), rec(5, "")]))
    rows_out = step.process([rec(6, "b"), rec(7, "c"), rec(8, ""), rec(9, "c")])
    table_out2 = step.process_table(to_table([rec(10, "c"), rec(11, "d"), rec(12, "d")]))
    assert table_out.column("text").to_pylist() == ["a", "b", ""]
    assert [r["text"] for r in rows_out] == ["c"]
    assert table_out2.column("text").to_pylist() == ["d"]
    assert removed == [(3, "exact duplicate of row 1"), (4, "exact duplicate of row 1"), (6, "exact duplicate of row 2"),
                       (8, "exact duplicate of row 5"), (9, "exact duplicate of row 7"),
                       (10, "exact duplicate of row 7"), (12, "exact duplicate of row 11")]
    assert step.details["duplicates"] == 7


def test_read_ahead_yields_every_table_in_order_and_stops_its_thread(tmp_path: Path) -> None:
    import threading

    from tuneforge.datasets.domain.records import RecordKind, new_record
    from tuneforge.datasets.domain.shards import ShardWriter, iter_tables, read_ahead

    writer = ShardWriter(tmp_path / "in", rows_per_shard=10_000)
    writer.add_many(new_record(RecordKind.TEXT, source="s", row=i, text=f"t{i}") for i in range(25_000))
    files = writer.close().files
    assert [t.to_pylist() for t in read_ahead(iter_tables(files))] == [t.to_pylist() for t in iter_tables(files)]
    ahead = read_ahead(iter_tables(files))
    assert next(ahead).num_rows == 8192
    ahead.close()  # the consumer stops early (a step failed): the reader thread must end
    assert not [t for t in threading.enumerate() if t.name.startswith("shard-reader")]
    assert list(read_ahead(iter([]))) == []


def test_shards_dictionary_encode_only_the_repetitive_columns_and_keep_their_hash(tmp_path: Path) -> None:
    from tuneforge.datasets.domain.records import RecordKind, new_record
    from tuneforge.datasets.domain.shards import DICTIONARY_COLUMNS, ShardWriter

    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    writer = ShardWriter(tmp_path / "in")
    writer.add_many(new_record(RecordKind.CHAT, source="s", row=i, messages=msgs, category="qa") for i in range(100))
    shards = writer.close()
    metadata = pq.ParquetFile(shards.files[0]).metadata.row_group(0)
    dictionary = {metadata.column(i).path_in_schema for i in range(metadata.num_columns)
                  if "RLE_DICTIONARY" in metadata.column(i).encodings}
    assert dictionary == set(DICTIONARY_COLUMNS)
    # The content hash is over Arrow IPC, not the Parquet bytes: pinned so that a change of
    # file encoding can never change the hash of existing content.
    assert shards.content_hash == PINNED_CHAT_HASH


PINNED_CHAT_HASH = "sha256:e2515fd28f901e1fbb03297290c9d0715487b6b52e2cfa0b72e5fdec97f75959"  # as before the encoding change


def test_nan_and_infinity_detection_matches_a_substring_search() -> None:
    import numpy as np
    rng = random.Random(11)
    alphabet = b'NaIinfityHOJ"{}:, '
    samples = [b"", b"NaN", b"Infinity", b"-Infinity]", b"Na", b"Infinit", b"xNaNx", b"NNaN", b"IInfinity"]
    samples += [bytes(rng.choice(alphabet) for _ in range(rng.randrange(30))) for _ in range(5000)]
    for data in samples:
        expected = b"NaN" in data or b"Infinity" in data
        assert fastjsonl.has_nan_or_infinity(np.frombuffer(data, dtype=np.uint8)) == expected, data


def test_a_failed_curation_run_leaves_no_reader_thread_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from tuneforge.datasets.domain import config as cfg
    from tuneforge.datasets.domain.pipeline import run_pipeline
    from tuneforge.datasets.domain.records import RecordKind, new_record
    from tuneforge.datasets.domain.shards import ShardWriter
    from tuneforge.datasets.domain.steps import NormalizeStep

    writer = ShardWriter(tmp_path / "in")
    writer.add_many(new_record(RecordKind.TEXT, source="s", row=i, text=f"t {i}") for i in range(30_000))
    inputs = writer.close().files
    calls = []

    def failing(self: NormalizeStep, table: pa.Table) -> pa.Table:
        calls.append(table.num_rows)
        if len(calls) == 2:
            raise OSError("disk full")
        return table

    monkeypatch.setattr(NormalizeStep, "process_table", failing)
    config = cfg.PipelineConfig((cfg.Normalize(),))
    with pytest.raises(OSError, match="disk full") as failure:
        run_pipeline(inputs, config, tmp_path / "out", eval_records=lambda ids: [])
    assert failure.traceback  # the traceback (and the run's frames) are still alive here
    assert calls == [8192, 8192]
    assert not [t for t in threading.enumerate() if t.name.startswith(("shard-reader", "shard-writer"))]
