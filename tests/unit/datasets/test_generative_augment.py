"""Generative augmentation: the step with a rule-based ``TextGenerator``, its configuration and model lookup.

The generator here is our own Protocol implemented by rules (no model): it makes every branch of
the step reachable on purpose. The real model runs in tests/integration/datasets/test_generative_augment_grpc.py.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tuneforge.common.errors import FailedPrecondition, InvalidInput
from tuneforge.datasets.adapters.generator import LocalTextGenerators, check_model_name
from tuneforge.datasets.convert import pipeline_from_pb
from tuneforge.datasets.domain import config as cfg
from tuneforge.datasets.domain.ingest import IngestOptions, ingest_file
from tuneforge.datasets.domain.pipeline import run_pipeline
from tuneforge.datasets.domain.shards import iter_records
from tuneforge.datasets.domain.steps_gen import (
    PARAPHRASE_EXAMPLES,
    PARAPHRASE_PROMPTS,
    GenerationParams,
    GenerativeAugmentStep,
    Prompt,
    check_models,
    clean_generation,
    judge,
    paraphrase_prompt,
)
from tuneforge.datasets.v1 import datasets_pb2 as pb

_OPENERS = ("Kindly", "Please", "Could you")
_CODES = {name: code for code, name in cfg.LANGUAGE_NAMES.items()}
_WORDS = ("now", "today", "quickly", "carefully", "simply", "briefly")


class RuleGenerator:
    """Deterministic rules: paraphrase k -> '<opener k> <text>', to French/German -> 'FR[<text reversed>]', back -> '<text> please'.

    Instructions containing a trigger word misbehave on purpose: EMPTY (nothing), SAME (the text
    again), LONG (ten times the text), ECHO (the prompt itself), STUCK (a translation left untranslated).
    With a temperature above 0, a word drawn from ``params.seed`` is appended (sampling stand-in).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], GenerationParams]] = []

    def _one(self, prompt: str, rng: random.Random, sample: bool) -> str:
        text = prompt.split("\n\n", 1)[1]
        if "EMPTY" in text:
            return "   "
        if "SAME" in text or ("STUCK" in text and prompt.startswith("Translate")):
            return text
        if "LONG" in text:
            return " ".join([text] * 10)
        if "ECHO" in text:
            return prompt
        if "TIPS" in text:  # carries the instruction out instead of rewording it
            return "1. Drink water.\n2. Sleep well.\n3. Walk daily."
        if "FRENCH" in text or text.startswith("Quel temps"):  # answers in French, whatever it is asked
            return "Quel temps fait-il aujourd'hui à Paris, mon ami ? Il fait beau et chaud."
        if prompt.startswith("Translate the following text into English"):
            out = text[3:-1][::-1] + " please"
        elif prompt.startswith("Translate the following text into "):
            language = prompt.split("into ", 1)[1].split(".", 1)[0]
            out = f"{_CODES[language].upper()}[{text[::-1]}]"  # reversed: in no language
        else:
            out = f"{_OPENERS[PARAPHRASE_PROMPTS.index(prompt.replace(text, '{text}'))]} {text}"
        return f"{out} {rng.choice(_WORDS)}" if sample else out

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[str]:
        self.calls.append((list(prompts), params))
        rng = random.Random(params.seed)
        # A chat is answered by its last message (the request after the worked examples).
        return [self._one(p if isinstance(p, str) else p[-1]["content"], rng, params.temperature > 0) for p in prompts]


class RuleModels:
    """A ``GeneratorProvider`` with one model, ``rules``."""

    def __init__(self) -> None:
        self.generator = RuleGenerator()

    def names(self) -> list[str]:
        return ["rules"]

    def get(self, name: str) -> RuleGenerator:
        if name != "rules":
            raise FailedPrecondition(f"no model {name!r}")
        return self.generator


def _record(row: int, instruction: str, *, augmented: bool = False, source: str = "f.jsonl") -> dict[str, Any]:
    return {"kind": "instruction", "messages": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": instruction},
                                                 {"role": "assistant", "content": f"answer {row}"}],
            "prompt": None, "chosen": None, "rejected": None, "text": None, "category": "qa",
            "provenance": {"source": source, "row": row, "augmented": augmented, "flags": []}, "split": None}


def _step(**kw: Any) -> GenerativeAugmentStep:
    config = cfg.GenerativeAugment(**{"model": "rules", **kw})
    cfg.check_pipeline(cfg.PipelineConfig((config,)))
    return GenerativeAugmentStep(lambda *a: None, config, RuleModels())


def _user(record: dict[str, Any]) -> str:
    return next(m["content"] for m in record["messages"] if m["role"] == "user")


def test_variants_follow_their_row_marked_augmented_and_flagged() -> None:
    step = _step(paraphrases=2, back_translation_languages=("fr", "de"))
    batch = [_record(1, "Name a colour of the sky."), _record(2, "List three fruits.")]
    out = step.process(batch)
    users = [_user(r) for r in out]
    # The two back-translations give the same text: the second is a duplicate and is discarded.
    assert users == ["Name a colour of the sky.", "Kindly Name a colour of the sky.", "Please Name a colour of the sky.",
                     "Name a colour of the sky. please",
                     "List three fruits.", "Kindly List three fruits.", "Please List three fruits.",
                     "List three fruits. please"]
    flags = [r["provenance"]["flags"] for r in out]
    assert flags[:4] == [[], ["aug:paraphrase:rules"], ["aug:paraphrase:rules"], ["aug:back_translation:fr:rules"]]
    assert [r["provenance"]["augmented"] for r in out] == [False, True, True, True] * 2
    assert all(r["provenance"]["row"] == 1 and r["messages"][2] == batch[0]["messages"][2] for r in out[:4])
    assert batch[0]["provenance"]["flags"] == [] and _user(batch[0]) == "Name a colour of the sky."  # not mutated
    assert step.report() == {"model": "rules", "rows_selected": 2,
                             "added": {"paraphrase": 4, "back_translation:fr": 2},
                             "discarded": {"back_translation:de": {"duplicate": 2}}}


def test_back_translation_goes_through_the_pivot_language() -> None:
    step = _step(back_translation_languages=("de",))
    step.process([_record(1, "Explain rain to a child.")])
    calls = step._generators.generator.calls  # type: ignore[attr-defined]
    assert [len(p) for p, _ in calls] == [1, 1]
    assert calls[0][0][0].startswith("Translate the following text into German.")
    assert calls[1][0][0].endswith("\n\nDE[.dlihc a ot niar nialpxE]")
    assert calls[1][0][0].startswith("Translate the following text into English.")


@pytest.mark.parametrize(("instruction", "method", "reason"), [
    ("EMPTY answer please", "paraphrase", "empty"),
    ("SAME words here", "paraphrase", "unchanged"),
    ("STUCK in translation", "back_translation:de", "pivot_unchanged"),
    ("LONG text that goes on", "paraphrase", "length_ratio"),
    ("ECHO the prompt back", "paraphrase", "echo"),
    ("Give three TIPS for health", "paraphrase", "line_count"),
    ("STUCK in translation", "back_translation:fr", "pivot_unchanged"),
    ("EMPTY answer please", "back_translation:fr", "pivot_empty"),
    ("FRENCH weather in Paris today", "paraphrase", "wrong_language"),
    ("FRENCH weather in Paris today", "back_translation:fr", "wrong_language"),
    ("FRENCH weather in Paris today", "back_translation:de", "pivot_wrong_language"),
])
def test_bad_generations_are_discarded_and_counted(instruction: str, method: str, reason: str) -> None:
    step = _step(paraphrases=1, back_translation_languages=("fr", "de"))
    out = step.process([_record(1, instruction)])
    assert method not in step.report()["added"]
    assert step.report()["discarded"][method] == {reason: 1}
    assert all(not (f.startswith(f"aug:{method}:")) for r in out for f in r["provenance"]["flags"])


def test_already_augmented_rows_and_rows_without_instruction_are_passed_through() -> None:
    step = _step(paraphrases=3)
    no_user = {**_record(3, "x"), "messages": [{"role": "assistant", "content": "hi"}]}
    batch = [_record(1, "Sort these numbers.", augmented=True), no_user, _record(4, "   ")]
    assert step.process(batch) == batch
    assert step.report()["rows_selected"] == 0 and step._generators.generator.calls == []  # type: ignore[attr-defined]


def test_sampling_is_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[str]:
        step = _step(paraphrases=2, temperature=0.8, seed=seed)
        return [_user(r) for r in step.process([_record(i, f"Describe item {i}.") for i in range(6)])]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_fraction_selects_a_seeded_share_of_rows() -> None:
    def chosen(seed: int, fraction: float) -> set[int]:
        step = _step(paraphrases=1, fraction=fraction, seed=seed)
        out = step.process([_record(i, f"Summarize report number {i}.") for i in range(400)])
        return {r["provenance"]["row"] for r in out if r["provenance"]["augmented"]}

    half = chosen(1, 0.5)
    assert 160 <= len(half) <= 240
    assert chosen(1, 0.5) == half and chosen(2, 0.5) != half
    assert chosen(1, 0.25) < half  # a smaller fraction is a subset (same hash per row)


def test_pipeline_runs_the_step_between_other_steps(tmp_path: Path) -> None:
    rows = [{"instruction": f"Give a tip about topic {i}.", "input": "", "output": f"Tip {i}."} for i in range(5)]
    source = tmp_path / "tips.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    staged = ingest_file(source, IngestOptions("tips.jsonl"), tmp_path / "in")
    config = cfg.PipelineConfig((cfg.Normalize(), cfg.GenerativeAugment("rules", paraphrases=1), cfg.ExactDedup()),
                                cfg.SplitConfig(0.4, 0.0, seed=1))
    result = run_pipeline(staged.shards.files, config, tmp_path / "out", eval_records=lambda ids: [],
                          generators=RuleModels())
    records = list(iter_records(result.shards.files))
    assert len(records) == 10
    assert [c.step for c in result.steps] == ["normalize", "generative_augment", "exact_dedup"]
    assert (result.steps[1].rows_in, result.steps[1].rows_out) == (5, 10)
    for original, variant in zip(records[::2], records[1::2], strict=True):
        assert _user(variant) == f"Kindly {_user(original)}"
        assert variant["provenance"]["augmented"] and not original["provenance"]["augmented"]
        assert variant["split"] == original["split"]  # a variant never leaks into another split


def test_judge_and_cleaning() -> None:
    assert clean_generation('  Paraphrase: "Name a colour."  ') == "Name a colour."
    assert clean_generation("Here is the rewritten instruction:\nList fruits.") == "List fruits."
    assert clean_generation("Here's a rewritten version:\n\nName a hue.\n\nExplanation: ...", "Name a colour.") == \
        "Name a hue."
    two_paragraphs = "Read this.\n\nThen answer."
    assert clean_generation("Study this.\n\nThen reply.", two_paragraphs) == "Study this.\n\nThen reply."
    assert clean_generation("Fill in:\nA, B", "Complete the list:\nA, B") == "Fill in:\nA, B"
    assert judge("Translate the following text into French: hello", "Please translate the following text into "
                 "French: hello") == ""  # the template words were in the source already: no echo
    assert judge("Name a colour.", "name a COLOUR") == "unchanged"
    assert judge("Hi", "Hello there") == ""  # short texts are not judged by their raw ratio


def _violations(step: cfg.GenerativeAugment) -> dict[str, str]:
    with pytest.raises(InvalidInput) as caught:
        cfg.check_pipeline(cfg.PipelineConfig((step,)))
    return {v.field: v.description for v in caught.value.violations}


P = "steps[0].generative_augment"


@pytest.mark.parametrize(("kw", "field"), [
    ({"model": ""}, f"{P}.model"),
    ({"model": "../etc"}, f"{P}.model"),
    ({"model": "org/model"}, f"{P}.model"),
    ({"model": ".hidden"}, f"{P}.model"),
    ({"model": "a\\b"}, f"{P}.model"),
    ({"paraphrases": -1}, f"{P}.paraphrases"),
    ({"paraphrases": 11}, f"{P}.paraphrases"),
    ({"paraphrases": 0}, P),
    ({"back_translation_languages": ("xx",)}, f"{P}.back_translation_languages[0]"),
    ({"back_translation_languages": ("fr", "fr")}, f"{P}.back_translation_languages[1]"),
    ({"back_translation_languages": ("en",)}, f"{P}.back_translation_languages[0]"),
    ({"source_language": "klingon"}, f"{P}.source_language"),
    ({"fraction": 0.0}, f"{P}.fraction"),
    ({"fraction": 1.5}, f"{P}.fraction"),
    ({"max_new_tokens": 0}, f"{P}.max_new_tokens"),
    ({"max_new_tokens": 5000}, f"{P}.max_new_tokens"),
    ({"temperature": -0.1}, f"{P}.temperature"),
    ({"batch_size": 0}, f"{P}.batch_size"),
])
def test_bad_parameters_name_the_field(kw: dict[str, Any], field: str) -> None:
    base = {"model": "m", "paraphrases": 1}
    assert field in _violations(cfg.GenerativeAugment(**{**base, **kw}))


def test_proto_defaults_and_explicit_zero_fraction() -> None:
    step = pb.CurationStep(generative_augment=pb.GenerativeAugmentStep(model="m", paraphrases=1))
    config = pipeline_from_pb(pb.CurateDatasetRequest(version_id="v", steps=[step])).steps[0]
    assert config == cfg.GenerativeAugment("m", 1, (), 1.0, 128, 0.0, 0, 8, "en")
    cfg.check_pipeline(cfg.PipelineConfig((config,)))
    zero = pb.CurationStep(generative_augment=pb.GenerativeAugmentStep(model="m", paraphrases=1, fraction=0.0,
                                                                       max_new_tokens=-3))
    config = pipeline_from_pb(pb.CurateDatasetRequest(version_id="v", steps=[zero])).steps[0]
    assert set(_violations(config)) == {f"{P}.fraction", f"{P}.max_new_tokens"}


def test_unknown_model_is_a_failed_precondition_listing_the_models() -> None:
    config = cfg.PipelineConfig((cfg.Normalize(), cfg.GenerativeAugment("nope", paraphrases=1)))
    with pytest.raises(FailedPrecondition) as caught:
        check_models(config, RuleModels())
    assert caught.value.field == "steps[1].generative_augment.model"
    assert "available: rules" in caught.value.message and "TUNEFORGE_MODELS_DIR" in caught.value.message
    with pytest.raises(FailedPrecondition, match="has no models") as caught:
        check_models(config, None, "curation.")
    assert caught.value.field == "curation.steps[1].generative_augment.model"
    check_models(cfg.PipelineConfig((cfg.GenerativeAugment("rules", paraphrases=1),)), RuleModels())


def test_local_models_are_listed_by_folder_and_names_are_checked(tmp_path: Path) -> None:
    for name, files in {"good": ("config.json", "model.safetensors"), "pickled": ("config.json", "model.bin"),
                        ".hidden": ("config.json", "model.safetensors")}.items():
        (tmp_path / name).mkdir()
        for f in files:
            (tmp_path / name / f).write_text("{}")
    models = LocalTextGenerators(tmp_path)
    assert models.names() == ["good"]
    assert models.get("good").name == "good"  # nothing is loaded yet
    with pytest.raises(FailedPrecondition, match="safetensors"):
        models.get("pickled")
    for bad in ("..", "a/b", "", ".hidden", "x\x00"):
        with pytest.raises(InvalidInput):
            check_model_name(bad)
    assert LocalTextGenerators(tmp_path / "missing").names() == []


def test_paraphrase_prompts_show_worked_examples_in_the_request_wording() -> None:
    chats = [paraphrase_prompt("Name a colour.", k) for k in range(3)]
    for k, chat in enumerate(chats):
        assert chat[0]["role"] == "system" and chat[-1] == {
            "role": "user", "content": PARAPHRASE_PROMPTS[k].format(text="Name a colour.")}
        examples = [(chat[i]["content"], chat[i + 1]["content"]) for i in range(1, len(chat) - 1, 2)]
        assert [a for _, a in examples] == [b for _, b in PARAPHRASE_EXAMPLES[k:] + PARAPHRASE_EXAMPLES[:k]]
        assert all(q == PARAPHRASE_PROMPTS[k].format(text=r) for (q, _), (r, _) in
                   zip(examples, PARAPHRASE_EXAMPLES[k:] + PARAPHRASE_EXAMPLES[:k], strict=True))
    assert len({str(c) for c in chats}) == 3  # greedy decoding sees three different contexts


def test_an_echoed_worked_example_is_discarded() -> None:
    assert judge("Name a colour.", PARAPHRASE_EXAMPLES[1][1]) == "echo"
    assert judge(PARAPHRASE_EXAMPLES[1][0] + " Please.", PARAPHRASE_EXAMPLES[1][1]) == ""
