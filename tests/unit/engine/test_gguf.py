"""GGUF conversion: errors on bad inputs, and SmolLM2-135M converted, reloaded and answering."""

from __future__ import annotations

import json
import math

import pytest

from tuneforge.common.errors import FailedPrecondition, InvalidInput, NotFound
from tuneforge.engine.models.gguf import MARKER_FILE, convert_gguf, file_sha256, smollm2_gguf_path

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        convert_gguf(tmp_path / "absent.gguf", tmp_path / "out")


def test_a_file_that_is_not_gguf_is_invalid_input_and_leaves_nothing(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"definitely not a gguf file")
    with pytest.raises(InvalidInput) as err:
        convert_gguf(bad, tmp_path / "out")
    assert err.value.field == "base_model.path"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]  # no temp folder left behind


def test_a_foreign_folder_is_never_overwritten(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FailedPrecondition, match="not written by the GGUF converter"):
        convert_gguf(gguf, out)
    assert (out / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def smollm2():
    try:
        return smollm2_gguf_path()
    except NotFound as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def converted(smollm2, tmp_path_factory):
    return convert_gguf(smollm2, tmp_path_factory.mktemp("smollm2") / "hf")


def _perplexity(model, tokenizer) -> float:
    ids = tokenizer(SENTENCE, return_tensors="pt").input_ids
    with torch.no_grad():
        return math.exp(model(input_ids=ids, labels=ids).loss.item())


def _greedy_answer(model, tokenizer, question: str) -> str:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    return tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_smollm2_converts_reloads_and_answers(smollm2, converted):
    marker = json.loads((converted / MARKER_FILE).read_text())
    assert marker["gguf_file"] == smollm2.name
    assert "model.safetensors" in marker["files"]
    assert not list(converted.glob("*.bin")) and not list(converted.glob("*.pt"))

    tokenizer = transformers.AutoTokenizer.from_pretrained(converted)
    model = transformers.AutoModelForCausalLM.from_pretrained(converted).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008

    reference = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2.parent, gguf_file=smollm2.name, dtype=torch.float32
    ).eval()
    ppl, ref_ppl = _perplexity(model, tokenizer), _perplexity(reference, tokenizer)
    assert ppl == pytest.approx(ref_ppl, rel=1e-5)
    assert ppl < 200  # a real language model, not random weights (vocabulary 49152)

    assert "Paris" in _greedy_answer(model, tokenizer, "What is the capital of France?")


@pytest.mark.slow
def test_second_conversion_is_a_cache_hit(smollm2, converted):
    weights = converted / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert convert_gguf(smollm2, converted) == converted
    assert weights.stat().st_mtime_ns == before


def test_complete_folder_is_reused_and_an_incomplete_one_is_not(tmp_path):
    # A folder as convert_gguf leaves it, for a (fake) GGUF: the cache hit needs no conversion.
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"not really a gguf, never parsed on a cache hit")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"x" * 10)
    marker = {"gguf_file": gguf.name, "gguf_sha256": file_sha256(gguf), "files": {"model.safetensors": 10}}
    (out / MARKER_FILE).write_text(json.dumps(marker))
    assert convert_gguf(gguf, out) == out
    # A listed file cut short: the folder is not complete, so conversion runs (and fails on the
    # fake GGUF) instead of handing back a broken folder; the old folder stays as it was.
    (out / "model.safetensors").write_bytes(b"x" * 3)
    with pytest.raises(InvalidInput, match="not a GGUF model"):
        convert_gguf(gguf, out)
    assert (out / MARKER_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "out"]
