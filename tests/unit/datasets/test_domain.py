"""Domain units: formats, readers, near-dup signatures, steps, splits, the removal guard, tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from tuneforge.common.errors import InvalidInput, ResourceExhausted
from tuneforge.datasets.domain import config as cfg
from tuneforge.datasets.domain.formats import DatasetFormat, convert_row, detect_format
from tuneforge.datasets.domain.ingest import IngestOptions, ValidationPolicy, ingest_file
from tuneforge.datasets.domain.neardup import NearDupIndex, SignatureBatcher, hash32, shingles
from tuneforge.datasets.domain.pipeline import assign_splits, run_pipeline
from tuneforge.datasets.domain.records import RECORD_SCHEMA
from tuneforge.datasets.domain.rejects import RowError
from tuneforge.datasets.domain.shards import iter_records
from tuneforge.datasets.domain.steps import LanguageStep, repetition_ratio, symbol_ratio
from tuneforge.datasets.domain.tokens import token_counter


@pytest.mark.parametrize(("row", "fmt"), [
    ({"instruction": "a", "input": "", "output": "b"}, DatasetFormat.ALPACA),
    ({"instruction": "a", "context": "", "response": "b", "category": "qa"}, DatasetFormat.DOLLY),
    ({"messages": []}, DatasetFormat.CHAT),
    ({"conversations": []}, DatasetFormat.SHAREGPT),
    ({"prompt": "p", "chosen": "c", "rejected": "r"}, DatasetFormat.PREFERENCE),
    ({"input": {}, "preferred_output": [], "non_preferred_output": []}, DatasetFormat.OPENAI_DPO),
    ({"text": "t"}, DatasetFormat.TEXT),
    ({"prompt": "p"}, DatasetFormat.PROMPT),
    ({"prompt": [{"role": "user", "content": "p"}], "answer": "4"}, DatasetFormat.PROMPT),
])
def test_detect_format(row: dict, fmt: DatasetFormat) -> None:
    assert detect_format(row) is fmt


def test_anthropic_style_preference_splits_the_prompt_off() -> None:
    row = {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
           "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]}
    record = convert_row(row, DatasetFormat.PREFERENCE, source="f", row_number=1)
    assert record["prompt"] == [{"role": "user", "content": "q"}]
    assert (record["chosen"], record["rejected"]) == ("good", "bad")


def test_tool_turns_and_system_position() -> None:
    ok = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "call"},
                       {"role": "tool", "content": "42"}, {"role": "assistant", "content": "it is 42"}]}
    assert convert_row(ok, DatasetFormat.CHAT, source="f", row_number=1)["kind"] == "chat"
    late_system = {"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]}
    with pytest.raises(RowError) as caught:
        convert_row(late_system, DatasetFormat.CHAT, source="f", row_number=1)
    assert caught.value.field == "messages[1].role"


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_detection_votes_past_a_bad_first_row(tmp_path: Path) -> None:
    rows = [{"instruction": "only"}] + [{"instruction": f"i{i}", "input": "", "output": "o"} for i in range(3)]
    result = ingest_file(_write(tmp_path / "a.jsonl", rows),
                         IngestOptions("a.jsonl", policy=ValidationPolicy.SKIP_INVALID), tmp_path / "stage")
    assert (result.format, result.shards.rows, result.rows_rejected) == (DatasetFormat.ALPACA, 3, 1)


def test_row_count_limit(tmp_path: Path) -> None:
    from tuneforge.datasets.domain.ingest import IngestLimits

    path = _write(tmp_path / "a.jsonl", [{"text": f"t{i}"} for i in range(5)])
    with pytest.raises(ResourceExhausted, match="more than 3 rows"):
        ingest_file(path, IngestOptions("a.jsonl"), tmp_path / "stage", limits=IngestLimits(max_rows=3))


def test_signatures_equal_datasketch_and_dedup_matches_its_lsh() -> None:
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(300)]
    base = [" ".join(rng.choice(vocab, 40)) for _ in range(50)]
    texts = base + [t.rsplit(" ", 1)[0] + " extra" for t in base[:10]]
    sigs = SignatureBatcher(128, 5).signatures(texts)
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    for i, text in enumerate(texts):
        m = MinHash(num_perm=128, hashfunc=hash32, scheme="affine32")
        m.update_batch(shingles(text, 5))
        assert np.array_equal(m.hashvalues, sigs[i])
        lsh.insert(i, m)
    index = NearDupIndex(0.8, 128, 5)
    matches = index.check_batch(list(range(len(texts))), texts)
    assert matches[50:] == list(range(10))
    assert all(m is None for m in matches[:50])


def test_quality_measures() -> None:
    assert repetition_ratio("a b c a b c a b c a b c") > 0.5
    assert repetition_ratio("the quick brown fox jumps") == 0.0
    assert symbol_ratio("!!!a") == 0.75


def test_language_step_keeps_english_only() -> None:
    removed: list[str] = []
    step = LanguageStep(lambda r, f, why: removed.append(why), cfg.Language(("en",), 0.5))
    rows = [{"messages": [{"role": "user", "content": t}], "provenance": {"row": 1}} for t in (
        "The weather is lovely today and we are going for a walk in the park.",
        "Le temps est magnifique aujourd'hui et nous allons nous promener dans le parc.")]
    kept = step.process(rows)
    assert len(kept) == 1 and "'fr'" in removed[0]


def test_splits_are_deterministic_stratified_and_keep_groups_together() -> None:
    categories = ["a"] * 50 + ["b"] * 50
    groups = [i // 2 for i in range(100)]  # pairs (an original and its augmented copy)
    split = cfg.SplitConfig(0.2, 0.1, seed=5, stratify=True)
    labels = assign_splits(categories, split, groups)
    assert np.array_equal(labels, assign_splits(categories, split, groups))
    assert all(labels[i] == labels[i + 1] for i in range(0, 100, 2))
    for start in (0, 50):
        part = labels[start : start + 50]
        assert (part == 1).sum() == 10 and (part == 2).sum() == 4  # 25 groups: 5 and round(2.5)=2 groups
    assert not np.array_equal(labels, assign_splits(categories, cfg.SplitConfig(0.2, 0.1, seed=6), groups))


def test_removal_guard_and_pipeline_output(tmp_path: Path) -> None:
    rows = [{"text": f"row number {i % 4} " * 3} for i in range(20)]
    staged = ingest_file(_write(tmp_path / "t.jsonl", rows), IngestOptions("t.jsonl"), tmp_path / "in")
    config = cfg.PipelineConfig((cfg.ExactDedup(),), max_removal_fraction=0.5)
    with pytest.raises(ResourceExhausted, match="would remove 16 of 20 rows"):
        run_pipeline(staged.shards.files, config, tmp_path / "out", eval_records=lambda ids: [])
    ok = run_pipeline(staged.shards.files, cfg.PipelineConfig((cfg.ExactDedup(),), max_removal_fraction=0.9),
                      tmp_path / "out2", eval_records=lambda ids: [])
    assert [r["text"] for r in iter_records(ok.shards.files)] == [rows[i]["text"] for i in range(4)]


def test_pipeline_config_reports_every_problem() -> None:
    bad = cfg.PipelineConfig((cfg.NearDedup(threshold=0.0), cfg.Balance()), cfg.SplitConfig(0.6, 0.5), 0.0)
    with pytest.raises(InvalidInput) as caught:
        cfg.check_pipeline(bad)
    fields = {v.field for v in caught.value.violations}
    assert {"steps[0].near_dedup.threshold", "steps[1].balance", "split", "max_removal_fraction"} <= fields


def test_tokenizers_resolve_only_to_the_services_models(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(["hello world", "hello there"] * 10, trainers.BpeTrainer(vocab_size=60, special_tokens=["[UNK]"]))
    models_dir, outside = tmp_path / "models", tmp_path / "elsewhere"
    for folder in (models_dir / "tiny", outside):
        folder.mkdir(parents=True)
        tokenizer.save(str(folder / "tokenizer.json"))
    counter = token_counter("tiny", models_dir=models_dir)
    assert counter.count(["hello world", "hello hello hello"]) == [2, 3]
    # A path (existing or not), a traversal, a hub name or an unknown model: one answer, naming no path.
    answers = set()
    for spec in (str(outside), str(tmp_path / "missing"), "../elsewhere", "tiny/../../elsewhere",
                 "meta-llama/Llama-3-8B", "/etc", "~"):
        with pytest.raises(InvalidInput, match="is not a model of this service") as caught:
            token_counter(spec, models_dir=models_dir)
        answers.add(str(caught.value).replace(repr(spec), "X"))
    assert len(answers) == 1
    with pytest.raises(InvalidInput, match="is not a model of this service"):
        token_counter("tiny")  # no models folder: nothing resolves


def test_schema_has_the_canonical_columns() -> None:
    assert RECORD_SCHEMA.names == ["kind", "messages", "prompt", "chosen", "rejected", "text", "category",
                                   "provenance", "split", "completion", "label", "margin", "answer"]


def test_zip_expansion_caps_hold_for_the_whole_archive_not_each_member(tmp_path):
    import zipfile

    from tuneforge.common.errors import ResourceExhausted
    from tuneforge.datasets.domain.archives import ArchiveLimits, extract_archive

    path = tmp_path / "three.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):
            z.writestr(f"part{i}.jsonl", b'{"text": "x"}\n' * 40_000)  # ~560 kB each, compresses well
    limits = ArchiveLimits(max_total_bytes=1_000_000, max_entries=10, max_expansion_ratio=10_000)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ResourceExhausted) as info:  # each member fits; together they do not
        extract_archive(path, out, limits)
    assert info.value.reason == "EXPANSION_LIMIT"
