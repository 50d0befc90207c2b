"""CreateJob's online RL fields map onto the engine spec and back (GetJob shows them resolved), bad
values come back as field violations in API terms, and the RL metrics reach the Metrics message."""

from __future__ import annotations

import pytest

from tuneforge.common.errors import InvalidInput
from tuneforge.engine.spec import load_spec
from tuneforge.training import convert
from tuneforge.training.v1 import training_pb2 as tr


def _request(**hp) -> tr.CreateJobRequest:
    return tr.CreateJobRequest(
        base_model="tiny", method=tr.METHOD_LORA, objective=tr.OBJECTIVE_GRPO, dataset_version_id="dsv_1",
        hyperparameters=tr.Hyperparameters(max_steps=4, **hp))


def _spec(req: tr.CreateJobRequest):
    doc = convert.job_request(req).spec
    doc = {**doc, "tenant": "acme", "output": {"checkpoint_uri": "file:///tmp/x", "run_name": "r"}}
    doc["data"]["train"].update(store_uri="file:///tmp/s", manifest_key="tenants/acme/d/MANIFEST.json",
                                manifest_sha256="0" * 64)
    with convert.api_terms(req):
        return load_spec(doc)


def test_rl_hyperparameters_map_to_the_spec_and_back() -> None:
    req = _request(num_generations=4, max_new_tokens=16, temperature=0.7, kl_beta=0.04, clip_epsilon_high=0.28,
                   rl_loss_type="grpo", scale_rewards="none", reward_model="ckpt_rm1", reward_model_weight=0.5,
                   reward_functions=[tr.RewardFunction(name="exact_match", weight=2.0),
                                     tr.RewardFunction(name="regex", pattern="^<a>"),
                                     tr.RewardFunction(name="length", target_length=20)])
    spec = _spec(req)
    rl = spec.objective.rl
    assert (rl.num_generations, rl.max_new_tokens, rl.temperature, rl.beta, rl.epsilon, rl.epsilon_high) == (
        4, 16, 0.7, 0.04, 0.2, 0.28)
    assert (rl.loss_type.value, rl.scale_rewards.value, rl.reward_model, rl.reward_model_weight) == (
        "grpo", "none", "ckpt_rm1", 0.5)
    assert [(f.name.value, f.weight, f.pattern, f.target_length) for f in rl.rewards] == [
        ("exact_match", 2.0, None, None), ("regex", 1.0, "^<a>", None), ("length", 1.0, None, 20)]
    back = convert.request_from_spec(spec.resolved_dict())
    assert back.objective == tr.OBJECTIVE_GRPO and back.hyperparameters.num_generations == 4
    assert back.hyperparameters.rl_loss_type == "grpo" and back.hyperparameters.reward_model == "ckpt_rm1"
    assert [(r.name, r.weight, r.pattern, r.target_length) for r in back.hyperparameters.reward_functions] == [
        ("exact_match", 2.0, "", 0), ("regex", 1.0, "^<a>", 0), ("length", 1.0, "", 20)]


def test_defaults_are_trls() -> None:
    rl = _spec(_request(reward_functions=[tr.RewardFunction(name="json_valid")])).objective.rl
    assert (rl.num_generations, rl.temperature, rl.beta, rl.epsilon, rl.epsilon_high, rl.loss_type.value,
            rl.scale_rewards.value) == (8, 1.0, 0.0, 0.2, 0.2, "dapo", "group")
    req = _request(reward_functions=[tr.RewardFunction(name="json_valid")])
    req.objective = tr.OBJECTIVE_RLOO
    assert _spec(req).objective.rl.beta == 0.05


@pytest.mark.parametrize(("hp", "field", "fix"), [
    ({"num_generations": 1}, "hyperparameters.num_generations", ">= 2"),
    ({"temperature": -0.5}, "hyperparameters.temperature", "> 0"),
    ({"rl_loss_type": "ppo"}, "hyperparameters.rl_loss_type", "dapo"),
    ({"scale_rewards": "always"}, "hyperparameters.scale_rewards", "group"),
    ({"reward_functions": [tr.RewardFunction(name="python")]}, "hyperparameters.reward_functions[0].name", "exact_match"),
    ({"reward_functions": [tr.RewardFunction(name="regex")]}, "hyperparameters.reward_functions[0].pattern", "needs a pattern"),
    ({"reward_functions": [tr.RewardFunction(name="regex", pattern="(")]}, "hyperparameters.reward_functions[0].pattern",
     "not a valid regular expression"),
    ({"reward_functions": [tr.RewardFunction(name="length")]}, "hyperparameters.reward_functions[0].target_length", "target length"),
    ({}, "hyperparameters.reward_functions", "needs a reward"),
])
def test_bad_rl_values_are_field_violations_in_api_terms(hp: dict, field: str, fix: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        _spec(_request(**hp))
    found = {v.field: v.description for v in caught.value.violations}
    assert field in found and fix in found[field], found


def test_packing_and_ppo_with_an_adapter_are_refused() -> None:
    req = _request(reward_functions=[tr.RewardFunction(name="json_valid")], packing=True)
    with pytest.raises(InvalidInput) as caught:
        _spec(req)
    assert "hyperparameters.packing" in {v.field for v in caught.value.violations}
    req.hyperparameters.packing = False
    req.objective = tr.OBJECTIVE_PPO  # the request's method is LoRA: PPO's value head needs full weights
    with pytest.raises(InvalidInput) as caught:
        _spec(req)
    assert "method" in {v.field for v in caught.value.violations}


def test_ppo_settings_map_with_their_defaults() -> None:
    req = _request(reward_functions=[tr.RewardFunction(name="json_valid")], gae_lambda=0.9, value_clip=0.5)
    req.objective, req.method = tr.OBJECTIVE_PPO, tr.METHOD_FULL
    rl = _spec(req).objective.rl
    assert (rl.beta, rl.gamma, rl.lam, rl.vf_coef, rl.cliprange_value) == (0.05, 1.0, 0.9, 0.1, 0.5)


def test_rl_metrics_reach_the_metrics_message() -> None:
    m = convert.metrics_to_proto({"step": 3, "loss": 0.1, "reward": -7.5, "reward_std": 2.0, "kl": 0.01,
                                  "entropy": 3.2, "clip_ratio": 0.05, "completion_length": 11.5, "value_loss": 4.0})
    assert (m.reward_mean, m.reward_std, m.kl, m.entropy, m.clip_fraction, m.response_length, m.value_loss) == (
        -7.5, 2.0, 0.01, 3.2, 0.05, 11.5, 4.0)
    from tuneforge.training.domain.run import METRIC_KEYS

    assert {"reward", "reward_std", "kl", "entropy", "clip_ratio", "completion_length", "value_loss"} <= set(METRIC_KEYS)


def test_kl_coefficient_can_turn_the_kl_term_off_where_kl_beta_zero_takes_the_default() -> None:
    def rloo(**hp) -> tr.CreateJobRequest:
        req = _request(reward_functions=[tr.RewardFunction(name="json_valid")], **hp)
        req.objective = tr.OBJECTIVE_RLOO
        return req

    assert _spec(rloo(kl_beta=0.0)).objective.rl.beta == 0.05  # implicit presence: 0 is "unset"
    assert _spec(rloo()).objective.rl.beta == 0.05
    off = _spec(rloo(kl_coefficient=0.0))
    assert off.objective.rl.beta == 0.0
    assert _spec(rloo(kl_coefficient=0.02)).objective.rl.beta == 0.02
    assert _spec(rloo(kl_beta=0.02)).objective.rl.beta == 0.02  # the deprecated field still works
    assert _spec(rloo(kl_beta=0.02, kl_coefficient=0.02)).objective.rl.beta == 0.02
    # GetJob reads the job back with kl_coefficient present, 0 included.
    back = convert.request_from_spec(off.resolved_dict()).hyperparameters
    assert back.HasField("kl_coefficient") and back.kl_coefficient == 0.0
    default = convert.request_from_spec(_spec(rloo()).resolved_dict()).hyperparameters
    assert (default.kl_coefficient, default.kl_beta) == (0.05, 0.05)


def test_kl_beta_and_kl_coefficient_that_disagree_are_refused_naming_the_new_field() -> None:
    req = _request(reward_functions=[tr.RewardFunction(name="json_valid")], kl_beta=0.04, kl_coefficient=0.0)
    problems = [convert.api_violation(v) for v in convert.job_request(req).problems]
    assert [p.field for p in problems] == ["hyperparameters.kl_coefficient"], problems
    assert "contradicts hyperparameters.kl_beta = 0.04" in problems[0].description
    assert "set only hyperparameters.kl_coefficient" in problems[0].description


def test_a_job_yaml_with_beta_zero_asks_for_no_kl() -> None:
    from tuneforge.client import jobspec

    req = jobspec.to_request({
        "model": {"name": "tiny"}, "method": {"kind": "lora"}, "data": {"train": {"dataset_version": "dsv_1"}},
        "objective": {"kind": "rloo", "rl": {"beta": 0.0, "rewards": [{"name": "json_valid"}]}}})
    assert req.hyperparameters.HasField("kl_coefficient") and req.hyperparameters.kl_coefficient == 0.0
    assert _spec(req).objective.rl.beta == 0.0


@pytest.mark.parametrize("field", ["kl_beta", "kl_coefficient"])
def test_a_bad_kl_value_is_named_as_the_caller_set_it(field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        _spec(_request(reward_functions=[tr.RewardFunction(name="json_valid")], **{field: -1.0}))
    named = {v.field for v in caught.value.violations if "kl" in v.field}
    assert named == {f"hyperparameters.{field}"}, caught.value.violations
