"""GRPO and RLOO through the engine on the tiny model: the reward rises on a verifiable toy task
(trl's quick-start length reward), a resumed run repeats the uninterrupted one exactly, rollouts
go through the RolloutEngine, and the built-in rewards score as documented."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.unit.engine._train_support import write_jsonl
from tuneforge.engine.api import run_training
from tuneforge.engine.rl.generation import HFRolloutEngine, SamplingParams
from tuneforge.engine.rl.rewards import combine, score_completions
from tuneforge.engine.spec import RewardFunction, TrainingSpec, load_spec
from tuneforge.engine.train import _artifacts
from tuneforge.engine.train.checkpoint import CheckpointManager
from tuneforge.engine.train.events import EngineEvent, EventKind, RunStatus

TOPICS = ["cats", "dogs", "rivers", "maps", "bread", "foxes", "poems", "numbers"]
TARGET = 80  # characters: 12 new tokens reach it only with long tokens, so every token counts


def prompt_rows() -> list[dict[str, str]]:
    return [{"prompt": f"Write something about {t}.", "answer": t} for t in TOPICS]


def rl_spec(model_dir: Path, tmp: Path, *, kind: str = "grpo", steps: int = 8, run_name: str = "run",
            save_every: int | None = None, **rl: object) -> TrainingSpec:
    data = write_jsonl(tmp / "data" / "train.jsonl", prompt_rows())
    return load_spec({
        "tenant": "test", "model": {"path": str(model_dir)}, "method": {"kind": "full"},
        "data": {"train": {"path": str(data)}, "max_seq_length": 96},
        "objective": {"kind": kind, "rl": {"num_generations": 8, "max_new_tokens": 12,
                                           "rewards": [{"name": "length", "target_length": TARGET}], **rl}},
        "hyperparameters": {"learning_rate": 2e-2, "max_steps": steps, "micro_batch_size": 4,
                            "gradient_accumulation_steps": 1, "lr_scheduler": "constant", "warmup_steps": 0,
                            "seed": 3},
        "schedule": {"save_every_steps": save_every, "keep_latest_n": 2} if save_every else {},
        "output": {"checkpoint_uri": f"file://{tmp}/ckpt", "run_name": run_name},
    })


def steps_of(events: list[EngineEvent]) -> dict[int, dict[str, float]]:
    return {e.step: e.metrics for e in events if e.kind is EventKind.STEP}


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "steps"), [("grpo", 8), ("ppo", 10)])  # PPO's value head learns first
def test_reward_rises_on_the_length_task(kind: str, steps: int, tiny_model_dir: Path, tmp_path: Path) -> None:
    events: list[EngineEvent] = []
    result = run_training(rl_spec(tiny_model_dir, tmp_path, kind=kind, steps=steps), on_event=events.append)
    assert result.status is RunStatus.COMPLETED and result.steps == steps
    got = steps_of(events)
    rewards = [got[s]["reward"] for s in range(1, steps + 1)]
    # Random weights write ~4 characters a token; the target needs ~7: the reward climbs towards 0.
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 15, rewards
    for s in got.values():
        assert all(math.isfinite(s[k]) for k in ("loss", "reward", "reward_std", "entropy", "clip_ratio",
                                                 "completion_length", "rewards/length", "grad_norm"))
        assert 0 < s["completion_length"] <= 12
    assert got[steps]["entropy"] < got[1]["entropy"]  # the policy sharpened


@pytest.mark.slow
def test_rloo_with_kl_trains_and_resume_repeats_the_run_exactly(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = rl_spec(tiny_model_dir, tmp_path, kind="rloo", steps=4, save_every=2)
    assert spec.objective.rl.beta == 0.05  # trl's RLOOConfig default
    events: list[EngineEvent] = []
    assert run_training(spec, on_event=events.append).status is RunStatus.COMPLETED
    want = steps_of(events)
    assert all(want[s]["kl"] != 0.0 for s in (2, 3, 4))  # the policy moved away from the reference
    # As if the run had been killed after its step-2 checkpoint.
    manager = CheckpointManager(spec.output.checkpoint_uri, spec.output.run_name)
    _artifacts.delete(manager.store, manager.prefix(4))
    again: list[EngineEvent] = []
    resumed = run_training(spec, on_event=again.append)
    assert resumed.resumed_from_uri.endswith("/run/step-2/")
    got = steps_of(again)
    assert sorted(got) == [3, 4]
    for s in (3, 4):  # same rollouts (seeded per step), same weights and optimizer state: same numbers
        for key in ("loss", "reward", "kl", "entropy", "grad_norm"):
            assert got[s][key] == pytest.approx(want[s][key], rel=1e-5, abs=1e-7), (s, key)


def test_rollouts_are_seeded_and_stop_at_the_stop_token(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = HFRolloutEngine(model, tok.pad_token_id, [tok.eos_token_id])
    prompts = [tok("hello there")["input_ids"], tok("a")["input_ids"]]
    state = torch.random.get_rng_state()
    a = engine.generate(prompts, 3, SamplingParams(max_new_tokens=6, seed=11))
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    b = engine.generate(prompts, 3, SamplingParams(max_new_tokens=6, seed=11))
    c = engine.generate(prompts, 3, SamplingParams(max_new_tokens=6, seed=12))
    assert [x.token_ids for x in a] == [x.token_ids for x in b] != [x.token_ids for x in c]
    assert [x.prompt_index for x in a] == [0, 0, 0, 1, 1, 1]
    for x in a:
        assert 1 <= len(x.token_ids) <= 6 and tok.pad_token_id not in x.token_ids
        assert x.logprobs is not None and len(x.logprobs) == len(x.token_ids) and all(v <= 0 for v in x.logprobs)
        assert x.finished == (x.token_ids[-1] == tok.eos_token_id)


@pytest.mark.parametrize(("fn", "completion", "answer", "want"), [
    ({"name": "exact_match"}, "  Paris ", "paris", 1.0),
    ({"name": "exact_match"}, "Paris is it", "Paris", 0.0),
    ({"name": "exact_match"}, "Paris", None, math.nan),
    ({"name": "contains_answer"}, "It is PARIS.", "paris", 1.0),
    ({"name": "regex", "pattern": r"^<answer>\d+</answer>$"}, "<answer>42</answer>", None, 1.0),
    ({"name": "regex", "pattern": r"^<answer>\d+</answer>$"}, "42", None, 0.0),
    ({"name": "regex", "pattern": r"(a+)+$"}, "a" * 40 + "!", None, 0.0),  # catastrophic backtracking: cut off
    ({"name": "length", "target_length": 5}, "abcdefgh", None, -3.0),
    ({"name": "json_valid"}, ' {"a": [1, 2]} ', None, 1.0),
    ({"name": "json_valid"}, "{a: 1}", None, 0.0),
])
def test_builtin_rewards(fn: dict, completion: str, answer: str | None, want: float) -> None:
    got = float(score_completions([RewardFunction(**fn)], [completion], [answer])[0, 0])
    assert (math.isnan(got) and math.isnan(want)) or got == want


def test_weighted_sum_keeps_unscored_rows_nan() -> None:
    per = torch.tensor([[1.0, math.nan], [math.nan, math.nan], [0.0, 2.0]])
    total = combine(per, [2.0, 0.5])
    assert total[0] == 2.0 and math.isnan(total[1]) and total[2] == 1.0


def test_reward_model_scores_and_a_causal_lm_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from tuneforge.common.errors import FailedPrecondition
    from tuneforge.engine.rl.rewards import RewardModelScorer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = LlamaConfig.from_pretrained(tiny_model_dir, num_labels=1)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    scorer = RewardModelScorer(tmp_path / "rm", torch.device("cpu"), batch_size=2)
    scores = scorer.score(["a short one", "a much longer text than the first one", "third"])
    assert scores.shape == (3,) and torch.isfinite(scores).all() and len(set(scores.tolist())) == 3
    assert torch.allclose(scores[:1], scorer.score(["a short one"]))  # padding does not change a score
    with pytest.raises(FailedPrecondition, match="not a sequence classifier"):
        RewardModelScorer(tiny_model_dir, torch.device("cpu"))


def test_reward_model_lora_checkpoint_scores_on_its_base(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A reward-model job's LoRA checkpoint (peft task SEQ_CLS, the score head saved beside the
    # adapter) scores on the base it was trained from, as the peft model itself does.
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from tuneforge.common.errors import FailedPrecondition
    from tuneforge.engine.rl.rewards import RewardModelScorer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    base.config.pad_token_id = tok.pad_token_id
    peft_model = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "score" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    texts = ["a short one", "a much longer text than the first one"]
    want = peft_model.eval()(**tok(texts, return_tensors="pt", padding=True)).logits[:, 0].detach()
    scorer = RewardModelScorer(tiny_model_dir, torch.device("cpu"), adapter=tmp_path / "adapter")
    assert torch.allclose(scorer.score(texts), want, atol=1e-5)
    # A causal LM's adapter is no reward model: refused before any scoring.
    lm = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                        LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, target_modules=["q_proj"]))
    lm.save_pretrained(tmp_path / "lm-adapter")
    with pytest.raises(FailedPrecondition, match="not a sequence classifier"):
        RewardModelScorer(tiny_model_dir, torch.device("cpu"), adapter=tmp_path / "lm-adapter")


@pytest.mark.slow
def test_ppo_trains_a_value_head_and_resumes_it_exactly(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = rl_spec(tiny_model_dir, tmp_path, kind="ppo", steps=4, save_every=2)
    assert (spec.objective.rl.beta, spec.objective.rl.gamma, spec.objective.rl.lam) == (0.05, 1.0, 0.95)
    events: list[EngineEvent] = []
    assert run_training(spec, on_event=events.append).status is RunStatus.COMPLETED
    want = steps_of(events)
    assert all(math.isfinite(want[s][k]) for s in want for k in ("loss", "value_loss", "kl", "reward"))
    assert want[1]["value_loss"] > 0  # a zero-initialised head predicts 0 against non-zero returns
    manager = CheckpointManager(spec.output.checkpoint_uri, spec.output.run_name)
    _artifacts.delete(manager.store, manager.prefix(4))
    again: list[EngineEvent] = []
    resumed = run_training(spec, on_event=again.append)
    assert resumed.resumed_from_uri.endswith("/run/step-2/")
    got = steps_of(again)
    for s in (3, 4):  # the value head came back with the policy: same value loss, same update
        for key in ("loss", "value_loss", "reward", "kl", "grad_norm"):
            assert got[s][key] == pytest.approx(want[s][key], rel=1e-5, abs=1e-7), (s, key)
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for f in (Path(resumed.last_checkpoint_uri.removeprefix("file://")) / "model").glob("*.safetensors"):
        weights |= load_file(f)
    assert "v_head.weight" in weights and float(weights["v_head.weight"].abs().sum()) > 0  # trained, saved
