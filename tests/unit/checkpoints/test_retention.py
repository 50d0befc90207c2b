"""Retention sets, table-driven: latest M + best N + protected, nothing else."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tuneforge.checkpoints.domain.model import (
    CheckpointDraft,
    CheckpointKind,
    FileEntry,
    Manifest,
    RetentionPolicy,
)
from tuneforge.checkpoints.domain.retention import plan_retention, rank_by_metric


def ckpt(step: int, loss: float | None) -> Manifest:
    metrics = {} if loss is None else {"eval_loss": loss}
    draft = CheckpointDraft(job_id="job", step=step, kind=CheckpointKind.LORA, prefix=f"job/s{step}",
                            files=(FileEntry("a", 1, "0" * 64),), metrics=metrics)
    return Manifest(checkpoint_id=f"c{step}", tenant="acme", draft=draft, digest="d",
                    create_time=datetime(2025, 1, 1, tzinfo=UTC))


# steps 1..6 with eval_loss: best is step 3 (0.2), then 5 (0.3), then 2 (0.4)
LOSSES = {1: 0.9, 2: 0.4, 3: 0.2, 4: 0.5, 5: 0.3, 6: 0.6}
CKPTS = [ckpt(s, v) for s, v in LOSSES.items()]


@pytest.mark.parametrize(
    ("policy", "protected", "keep"),
    [
        (RetentionPolicy(keep_best_n=0, keep_latest_m=1), set(), {"c6"}),
        (RetentionPolicy(keep_best_n=0, keep_latest_m=2), set(), {"c5", "c6"}),
        (RetentionPolicy(keep_best_n=1, keep_latest_m=1), set(), {"c3", "c6"}),
        (RetentionPolicy(keep_best_n=2, keep_latest_m=1), set(), {"c3", "c5", "c6"}),
        (RetentionPolicy(keep_best_n=2, keep_latest_m=2), set(), {"c3", "c5", "c6"}),  # overlap
        (RetentionPolicy(keep_best_n=3, keep_latest_m=0), set(), {"c2", "c3", "c5"}),
        (RetentionPolicy(keep_best_n=1, keep_latest_m=1), {"c1"}, {"c1", "c3", "c6"}),  # alias/pin
        (RetentionPolicy(keep_best_n=1, keep_latest_m=1, greater_is_better=True), set(), {"c1", "c6"}),
        (RetentionPolicy(keep_best_n=10, keep_latest_m=10), set(), {f"c{i}" for i in range(1, 7)}),
        (RetentionPolicy(keep_best_n=1, keep_latest_m=1, metric="accuracy"), set(), {"c6"}),  # no metric
    ],
)
def test_plan_keeps_exactly_the_expected_set(policy: RetentionPolicy, protected: set[str],
                                              keep: set[str]) -> None:
    plan = plan_retention(CKPTS, policy, protected)
    assert set(plan.keep) == keep
    assert set(plan.delete) == {c.checkpoint_id for c in CKPTS} - keep
    assert list(plan.delete) == sorted(plan.delete, key=lambda i: int(i[1:]))  # step order


def test_checkpoints_without_the_metric_are_never_counted_as_best() -> None:
    mixed = [ckpt(1, None), ckpt(2, 0.5), ckpt(3, None)]
    plan = plan_retention(mixed, RetentionPolicy(keep_best_n=1, keep_latest_m=1), set())
    assert set(plan.keep) == {"c2", "c3"}


def test_metric_ties_prefer_the_later_step() -> None:
    ranked = rank_by_metric([ckpt(1, 0.3), ckpt(2, 0.3), ckpt(3, 0.1)], "eval_loss", False)
    assert [c.checkpoint_id for c in ranked] == ["c3", "c2", "c1"]


@pytest.mark.parametrize(
    ("policy", "fields"),
    [
        (RetentionPolicy(keep_best_n=0, keep_latest_m=0), {"policy.keep_latest_m"}),
        (RetentionPolicy(keep_best_n=-1, keep_latest_m=1), {"policy.keep_best_n"}),
        (RetentionPolicy(keep_best_n=2, keep_latest_m=1, metric=""), {"policy.metric"}),
        (RetentionPolicy(keep_best_n=2, keep_latest_m=1), set()),
    ],
)
def test_policy_violations_name_the_field(policy: RetentionPolicy, fields: set[str]) -> None:
    assert {v.field for v in policy.violations()} == fields
