"""The engine's entry point for the training service: ``run_training(spec, ...)``.

One worker runs the recipe in this process; several run it in Ray Train workers (DeepSpeed ZeRO
or DDP) through ``tuneforge.engine.distributed``. Either way events reach ``on_event`` here and a
``TrainingResult`` comes back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from tuneforge.engine.spec import ObjectiveKind, TrainingSpec
from tuneforge.engine.train.events import EngineEvent, EventKind, RunStatus, TrainingResult
from tuneforge.engine.train.reporters import ReporterConfig, ReporterKind, WandbMode, build_reporter, fan_out

__all__ = [
    "EngineEvent", "EventKind", "ReporterConfig", "ReporterKind", "RunStatus", "TrainingResult", "WandbMode",
    "recipe_for", "run_training",
]

Recipe = Callable[..., TrainingResult]


def recipe_for(spec: TrainingSpec) -> Recipe:
    """The recipe module's ``run`` for the spec's objective."""
    import importlib

    name = {
        ObjectiveKind.DPO: "dpo",
        ObjectiveKind.ORPO: "reference_free",
        ObjectiveKind.SIMPO: "reference_free",
        ObjectiveKind.PRETRAIN: "pretrain",
        ObjectiveKind.KTO: "kto",
        ObjectiveKind.REWARD_MODEL: "reward_model",
        ObjectiveKind.GRPO: "online_rl",
        ObjectiveKind.RLOO: "online_rl",
        ObjectiveKind.PPO: "online_rl",
    }.get(spec.objective.kind, "sft")
    run: Recipe = importlib.import_module(f"tuneforge.engine.recipes.{name}").run
    return run


def run_training(
    spec: TrainingSpec,
    *,
    on_event: Callable[[EngineEvent], None] | None = None,
    cancel: threading.Event | None = None,
    reporters: Sequence[ReporterConfig] = (),
) -> TrainingResult:
    """Train as ``spec`` says; resume from the run's latest complete checkpoint if there is one.

    Args:
        spec: a validated training spec (``tuneforge.engine.spec.load_spec``).
        on_event: receives STARTED, STEP (loss, lr, grad_norm, tokens/s, samples/s, peak memory),
            EVAL (eval_loss, eval_perplexity; reward models also eval_reward_accuracy and
            eval_reward_margin_mean), CHECKPOINT, RESUMED, EARLY_STOPPED and FINISHED.
        cancel: set it to stop after the current optimizer step (status CANCELLED).
        reporters: optional TensorBoard / MLflow / W&B reporters (none by default); they see the
            same events as ``on_event`` and never need a network unless configured to.

    Returns:
        How the run ended, its last metrics and checkpoint URIs.

    Raises:
        InvalidInput: bad data (e.g. every label masked in a batch), naming the rows and the fix.
        FailedPrecondition: a reporter's library is not installed.
        TuneforgeError: other engine failures, each naming cause and remedy.
    """
    built = [build_reporter(r) for r in reporters]
    emit = fan_out(on_event, built)
    try:
        if spec.resources.num_workers > 1 or spec.resources.ray_address:
            from tuneforge.engine.distributed import run_on_ray

            return run_on_ray(spec, on_event=emit, cancel=cancel)
        return recipe_for(spec)(spec, on_event=emit, cancel=cancel)
    finally:
        for reporter in built:
            reporter.close()
