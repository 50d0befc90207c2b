"""The engine's inputs: local files in every upload format, and dataset versions read from the store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tuneforge.common.errors import FailedPrecondition, IntegrityError, InvalidInput
from tuneforge.common.storage import open_object_store
from tuneforge.common.storage.checkpoint_writer import CheckpointWriter
from tuneforge.datasets.domain.records import RecordKind, new_record, to_table
from tuneforge.engine.data.records import RecordKind as EngineKind
from tuneforge.engine.data.sources import read_source
from tuneforge.engine.spec import DataSource

OPENAI_CHAT = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                             {"role": "assistant", "content": "Hello."}]}] * 3


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(("name", "content", "kind"), [
    ("chat.jsonl", "".join(json.dumps(r) + "\n" for r in OPENAI_CHAT), EngineKind.CHAT),
    ("alpaca.json", json.dumps([{"instruction": "Add", "input": "1+1", "output": "2"}]), EngineKind.INSTRUCTION),
    ("dolly.csv", "instruction,context,response\nName a colour,,Blue\n", EngineKind.INSTRUCTION),
    ("prefs.jsonl", json.dumps({"prompt": "Sky?", "chosen": "Blue.", "rejected": "Green."}) + "\n",
     EngineKind.PREFERENCE),
    ("sharegpt.jsonl", json.dumps({"conversations": [{"from": "human", "value": "Hi"},
                                                     {"from": "gpt", "value": "Hello"}]}) + "\n", EngineKind.CHAT),
    ("text.jsonl", json.dumps({"text": "Once upon a time."}) + "\n", EngineKind.TEXT),
])
def test_every_upload_format_reads_through_the_engines_door(tmp_path: Path, name: str, content: str,
                                                             kind: EngineKind) -> None:
    (tmp_path / name).write_text(content)
    records = read_source(DataSource(path=tmp_path / name), "train")
    assert records and {r.kind for r in records} == {kind}


def test_openai_messages_jsonl_keeps_every_turn(tmp_path: Path) -> None:
    records = read_source(DataSource(path=_jsonl(tmp_path / "chat.jsonl", OPENAI_CHAT)), "train")
    assert [m.role for m in records[0].messages or ()] == ["system", "user", "assistant"]


def test_bad_rows_are_named_with_the_fix(tmp_path: Path) -> None:
    rows = [*OPENAI_CHAT, {"messages": [{"role": "user", "content": "no answer"}]}]
    with pytest.raises(InvalidInput) as info:
        read_source(DataSource(path=_jsonl(tmp_path / "chat.jsonl", rows)), "train")
    assert [v.field.split(".")[0] for v in info.value.violations] == ["train[4]"]


def _version(tmp_path: Path) -> tuple[DataSource, Path]:
    """A dataset version as the datasets service stores it: Parquet shards under data/, manifest last."""
    store = open_object_store((tmp_path / "objects").as_uri())
    local = tmp_path / "version"
    (local / "data").mkdir(parents=True)
    records = [new_record(RecordKind.CHAT, source="x", row=i, messages=[{"role": "user", "content": f"q{i}"},
                                                                      {"role": "assistant", "content": f"a{i}"}])
               for i in range(10)]
    for i, r in enumerate(records):
        r["split"] = "validation" if i < 3 else "train"
    pq.write_table(to_table(records[:5]), local / "data" / "part-00000.parquet")
    pq.write_table(to_table(records[5:]), local / "data" / "part-00001.parquet")
    prefix = "tenants/acme/datasets/ds_1/versions/dsv_1/"
    CheckpointWriter(store).write(local, prefix, {})
    key = prefix + "MANIFEST.json"
    sha = hashlib.sha256(store.get_bytes(key)).hexdigest()
    source = DataSource(dataset_version="dsv_1", split="validation", store_uri=store.uri, manifest_key=key,
                        manifest_sha256=sha)
    return source, tmp_path / "objects"


def test_a_version_is_read_from_the_store_verified_and_by_split(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE_DIR", str(tmp_path / "cache"))
    source, _ = _version(tmp_path)
    assert [r.messages[0].content for r in read_source(source, "validation")] == ["q0", "q1", "q2"]  # type: ignore[index]
    everything = source.model_copy(update={"split": None})
    assert len(read_source(everything, "train")) == 10
    with pytest.raises(IntegrityError, match="not the one the job was created with"):
        read_source(source.model_copy(update={"manifest_sha256": "0" * 64}), "validation")


def test_a_version_without_store_reference_names_the_fix() -> None:
    with pytest.raises(FailedPrecondition, match=r"data\.train\.path"):
        read_source(DataSource(dataset_version="dsv_1"), "train")
