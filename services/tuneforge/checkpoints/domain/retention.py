"""Which checkpoints of a job a retention policy keeps (pure functions, no I/O).

Kept: the latest ``keep_latest_m`` by step, the best ``keep_best_n`` by the policy's metric, and
every *protected* checkpoint (pointed at by an alias, pinned by a running job). Checkpoints
without the metric are never counted among the best; ties on the metric prefer the later step.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from tuneforge.checkpoints.domain.model import Manifest, RetentionPolicy


@dataclass(frozen=True)
class RetentionPlan:
    """The outcome of a retention pass: ids kept and ids to delete (both in step order)."""

    keep: tuple[str, ...]
    delete: tuple[str, ...]


def rank_by_metric(
    checkpoints: Iterable[Manifest], metric: str, greater_is_better: bool
) -> list[Manifest]:
    """Checkpoints having ``metric``, best first; ties broken by the later step first."""
    having = [c for c in checkpoints if metric in c.metrics]
    sign = -1.0 if greater_is_better else 1.0
    return sorted(having, key=lambda c: (sign * c.metrics[metric], -c.step))


def best_checkpoint(
    checkpoints: Iterable[Manifest], metric: str, greater_is_better: bool
) -> Manifest | None:
    """The best checkpoint by ``metric``, or None when none has it."""
    ranked = rank_by_metric(checkpoints, metric, greater_is_better)
    return ranked[0] if ranked else None


def plan_retention(
    checkpoints: Sequence[Manifest], policy: RetentionPolicy, protected: Collection[str]
) -> RetentionPlan:
    """Decide what a retention pass keeps and deletes.

    Args:
        checkpoints: every committed checkpoint of one job.
        policy: the job's policy (assumed valid: see ``RetentionPolicy.violations``).
        protected: ids that must survive whatever the policy says (aliased or pinned).

    Returns:
        The plan; ``keep`` and ``delete`` partition the input ids.
    """
    by_step = sorted(checkpoints, key=lambda c: c.step)
    keep: set[str] = {c.checkpoint_id for c in by_step if c.checkpoint_id in protected}
    if policy.keep_latest_m > 0:
        keep.update(c.checkpoint_id for c in by_step[-policy.keep_latest_m :])
    if policy.keep_best_n > 0:
        ranked = rank_by_metric(by_step, policy.metric, policy.greater_is_better)
        keep.update(c.checkpoint_id for c in ranked[: policy.keep_best_n])
    return RetentionPlan(
        keep=tuple(c.checkpoint_id for c in by_step if c.checkpoint_id in keep),
        delete=tuple(c.checkpoint_id for c in by_step if c.checkpoint_id not in keep),
    )
