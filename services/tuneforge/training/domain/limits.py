"""Operator caps on what one job may ask for (``TUNEFORGE_TRAIN_MAX_*``).

The training spec's own ranges are the hard limits of the engine; these are the deployment's
decision (how many workers, how long, how large a batch one tenant's job may take). Violations name
the spec field, like every other problem of a request.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.common.errors import FieldViolation
from tuneforge.engine.spec import TrainingSpec


@dataclass(frozen=True)
class JobLimits:
    """The largest value a job may ask for, per resource-shaped field."""

    num_workers: int = 16
    steps: int = 1_000_000
    max_seq_length: int = 32768
    micro_batch_size: int = 256
    gradient_accumulation_steps: int = 256


def limit_violations(spec: TrainingSpec, limits: JobLimits) -> list[FieldViolation]:
    """Every field of ``spec`` above its operator cap, with the cap and the setting that raises it."""
    hp, sch = spec.hyperparameters, spec.schedule
    checks = (
        ("resources.num_workers", spec.resources.num_workers, limits.num_workers, "TRAIN_MAX_WORKERS"),
        ("hyperparameters.max_steps", hp.max_steps, limits.steps, "TRAIN_MAX_STEPS"),
        ("hyperparameters.warmup_steps", hp.warmup_steps, limits.steps, "TRAIN_MAX_STEPS"),
        ("schedule.eval_every_steps", sch.eval_every_steps, limits.steps, "TRAIN_MAX_STEPS"),
        ("schedule.save_every_steps", sch.save_every_steps, limits.steps, "TRAIN_MAX_STEPS"),
        ("data.max_seq_length", spec.data.max_seq_length, limits.max_seq_length, "TRAIN_MAX_SEQ_LENGTH"),
        ("hyperparameters.micro_batch_size", hp.micro_batch_size, limits.micro_batch_size,
         "TRAIN_MAX_MICRO_BATCH_SIZE"),
        ("hyperparameters.gradient_accumulation_steps", hp.gradient_accumulation_steps,
         limits.gradient_accumulation_steps, "TRAIN_MAX_GRADIENT_ACCUMULATION_STEPS"),
    )
    return [FieldViolation(field, f"is {value}: this deployment allows at most {cap} (operators raise it "
                                  f"with TUNEFORGE_{setting})")
            for field, value, cap, setting in checks if value is not None and value > cap]
