"""Admission: whether a job fits this cluster, asked of the memory planner before the job is queued.

``assess(spec, model_config, capacity)`` plans the job's peak memory per device with
``tuneforge.engine.planner`` (the model's size from its ``config.json``; method, ZeRO stage,
offload, micro-batch, sequence length, gradient checkpointing, precision, LoRA shape, QLoRA storage,
the DPO reference model) and compares it with the memory of one device of the cluster
(``ClusterCapacity``, from the operator's settings). A job that does not fit gets the changes that
would make it fit, each planned too, best first: changes that keep the training result (gradient
checkpointing, ZeRO partitioning, a smaller micro-batch with more accumulation), then slower ones
(offload, more workers), then ones that change what is trained (LoRA, QLoRA), then a shorter
sequence; within a rank, the smallest need first. Single changes and pairs of changes are
planned; when none fits, the fewest changes that fit together. ``Assessment.refusal`` is the
``FailedPrecondition`` CreateJob raises, naming the numbers and those fixes.

The plan mirrors the engine: ZeRO and offload take effect only with several workers (one worker
trains with plain PyTorch); preference objectives (DPO, ORPO, SimPO) hold chosen and rejected
sequences at once (twice the micro-batch of activations); DPO with ``reference: model_copy`` keeps a
frozen copy of the base model on each device. Prefix and prompt tuning are planned as a frozen base
whose sequence grows by the virtual tokens, plus the virtual tokens' own training state.

Nothing here imports grpc; field names are the spec's, turned into the API's by the ``namer``
the service is wired with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tuneforge.common.errors import FailedPrecondition, FieldViolation, InvalidInput
from tuneforge.engine.planner import GIB, LINEAR_MODULES, plan_memory, plan_online_rl
from tuneforge.engine.spec import (
    ONLINE_RL_OBJECTIVES,
    PREFERENCE_OBJECTIVES,
    DpoReference,
    MethodKind,
    ObjectiveKind,
    TrainingSpec,
)
from tuneforge.training.domain.limits import JobLimits

Namer = Callable[[str], str]

# How disruptive a fix is: the order fixes are offered in (then by memory).
SAME_RESULT, SLOWER, OTHER_METHOD, SHORTER_DATA = 0, 1, 2, 3
MAX_FIXES = 6
MESSAGE_FIXES = 3


@dataclass(frozen=True)
class ClusterCapacity:
    """What one job may use: devices and memory per device (0 = not declared: not checked)."""

    gpus: int | None = None  # None: not declared; 0: a CPU-only cluster
    gpu_memory_bytes: int = 0
    cpu_workers: int = 0
    cpu_worker_memory_bytes: int = 0
    margin: float = 0.1

    def device(self, use_gpu: bool) -> tuple[str, int, int]:
        """(kind, devices available (0: no limit declared), memory of one device (0: unchecked))."""
        if use_gpu:
            return "gpu", self.gpus or 0, self.gpu_memory_bytes
        return "cpu", self.cpu_workers, self.cpu_worker_memory_bytes


@dataclass(frozen=True)
class Setup:
    """The knobs admission turns: what a fix changes, and what the planner is asked."""

    method: MethodKind
    workers: int
    zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    checkpointing: bool
    micro_batch: int
    grad_accum: int
    seq_len: int

    @classmethod
    def of(cls, spec: TrainingSpec) -> Setup:
        """The setup a spec asks for."""
        r, hp = spec.resources, spec.hyperparameters
        return cls(spec.method.kind, r.num_workers, r.zero_stage, r.offload_optimizer, r.offload_params,
                   spec.gradient_checkpointing, hp.micro_batch_size, hp.gradient_accumulation_steps,
                   spec.data.max_seq_length)


@dataclass(frozen=True)
class MemoryNeed:
    """Planned bytes of one training step on one device, and the parameter counts."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    reference_model: int
    zero3_buffer: int
    total: int
    params: int
    trainable: int


@dataclass(frozen=True)
class Fix:
    """A change to the request (spec path -> value) and the memory per device it would need."""

    changes: tuple[tuple[str, str], ...]
    total: int
    rank: int

    def fields(self, namer: Namer) -> tuple[str, ...]:
        """The request fields the fix changes."""
        return tuple(namer(path) for path, _ in self.changes)

    def describe(self, namer: Namer) -> str:
        """E.g. ``resources.zero_stage=3, resources.offload_optimizer=true``."""
        return ", ".join(f"{namer(path)}={value}" for path, value in self.changes)


@dataclass(frozen=True)
class Assessment:
    """A job against the cluster: the plan, whether it fits, why not and what would fit."""

    device: str
    num_devices: int
    device_memory: int
    usable: int
    need: MemoryNeed | None
    problems: tuple[FieldViolation, ...] = ()
    fixes: tuple[Fix, ...] = ()
    notes: tuple[str, ...] = ()
    over_memory: bool = False

    @property
    def fits(self) -> bool:
        """Whether CreateJob admits the job."""
        return not self.problems and not self.over_memory

    def reasons(self, namer: Namer = str) -> list[str]:
        """Why the job does not fit, one sentence each (empty when it fits)."""
        out = [f"{namer(p.field)}: {p.description}" for p in self.problems]
        if self.over_memory and self.need is not None:
            out.append(f"needs {_gib(self.need.total)} per {self.device.upper()} ({_breakdown(self.need)}) but one "
                       f"{self.device.upper()} has {_gib(self.device_memory)} ({_gib(self.usable)} usable)")
        return out

    def summary(self) -> str:
        """One line for the job's log: the planned peak against the device (or why it was not checked)."""
        unit = f"{self.num_devices} {self.device.upper()} worker(s)"
        if self.need is None:
            return f"admitted on {unit}; " + "; ".join(self.notes)
        of = f" of {_gib(self.usable)} usable" if self.device_memory else " (device memory not declared)"
        return (f"admitted on {unit}: planned peak {_gib(self.need.total)} per {self.device.upper()}{of} "
                f"({_breakdown(self.need)} GiB)")

    def refusal(self, namer: Namer = str) -> FailedPrecondition:
        """The error CreateJob raises for a job that does not fit (call only when ``not fits``)."""
        reasons = self.reasons(namer)
        violations = list(self.problems)
        tail = ""
        if self.over_memory:
            # The details repeat the message's sentences exactly, so the status message does not.
            unit = self.device.upper()
            texts = [f"set {f.describe(namer)}: needs {_gib(f.total)} per {unit}" for f in self.fixes]
            violations += [FieldViolation(f.changes[0][0], text) for f, text in zip(self.fixes, texts, strict=True)]
            if texts:  # the best few in the message (it is bounded), all of them in the details
                more = f" ({len(texts) - MESSAGE_FIXES} more in the details)" if len(texts) > MESSAGE_FIXES else ""
                tail = "; fixes that fit, best first: " + "; ".join(texts[:MESSAGE_FIXES]) + more
            else:
                nothing = "nothing fits this cluster: use larger devices"
                violations.append(FieldViolation("resources.num_workers", nothing))
                tail = f"; {nothing} (no change of method, ZeRO stage, offload, micro-batch or sequence length fits)"
        violations = [FieldViolation(namer(v.field), v.description) for v in violations]
        metadata = {"device": self.device, "num_devices": str(self.num_devices),
                    "device_memory_bytes": str(self.device_memory), "usable_memory_bytes": str(self.usable)}
        if self.need is not None:
            metadata["needed_memory_bytes"] = str(self.need.total)
            metadata["needed_memory_gib"] = f"{self.need.total / GIB:.2f}"
            metadata["usable_memory_gib"] = f"{self.usable / GIB:.2f}"
        return FailedPrecondition("the job cannot run on this cluster: " + "; ".join(reasons) + tail,
                                  violations=violations, reason="JOB_DOES_NOT_FIT", metadata=metadata)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def _breakdown(need: MemoryNeed) -> str:
    parts = (("weights", need.weights), ("gradients", need.gradients), ("optimizer", need.optimizer),
             ("activations", need.activations), ("reference model", need.reference_model),
             ("ZeRO-3 buffer", need.zero3_buffer))
    return ", ".join(f"{name} {n / GIB:.2f}" for name, n in parts if n)


# ------------------------------------------------------------------------------------ planning


def _targets(spec: TrainingSpec, model_type: str) -> tuple[str, ...]:
    from tuneforge.engine.models.targets import default_target_modules

    asked = spec.method.lora.target_modules or default_target_modules(model_type) or list(LINEAR_MODULES)
    known = tuple(t for t in asked if t in LINEAR_MODULES)
    return known or LINEAR_MODULES


def plan(spec: TrainingSpec, config: Mapping[str, Any], s: Setup) -> MemoryNeed:
    """The planner's figure for ``spec`` with the knobs of ``s``.

    Raises:
        InvalidInput: the planner does not know the model's architecture (``model_config.model_type``).
    """
    sixteen = spec.precision.value != "fp32"
    several = s.workers > 1  # the engine uses DeepSpeed only with several workers
    stage = s.zero_stage if several else 0
    adapter_tokens = 0
    method, r, targets = s.method.value, spec.method.lora.r, _targets(spec, str(config.get("model_type", "")))
    if s.method in (MethodKind.PREFIX, MethodKind.PROMPT):
        # A frozen base (LoRA of rank 1 on one module: a negligible adapter) over a longer sequence.
        adapter_tokens = (spec.method.prefix if s.method is MethodKind.PREFIX else spec.method.prompt).num_virtual_tokens
        method, r, targets = "lora", 1, ("q_proj",)
    knobs: dict[str, Any] = dict(
        zero_stage=stage, offload_optimizer=s.offload_optimizer and stage > 0,
        offload_params=s.offload_params and stage == 3, gradient_checkpointing=s.checkpointing,
        dtype=spec.precision.value, lora_r=r, lora_targets=targets, lora_dropout=spec.method.lora.dropout,
        quantization=spec.method.qlora.quant_type.value, double_quant=spec.method.qlora.double_quant)
    kind = spec.objective.kind
    rollout = 0
    if kind in ONLINE_RL_OBJECTIVES:  # micro_batch counts prompts; each has num_generations completions
        rl = spec.objective.rl
        beta = rl.beta if rl.beta is not None else (0.0 if kind is ObjectiveKind.GRPO else 0.05)
        p = plan_online_rl(config, method, prompt_len=s.seq_len + adapter_tokens, max_new_tokens=rl.max_new_tokens,
                           prompts=s.micro_batch, num_generations=rl.num_generations, reference=beta > 0,
                           value_model=kind is ObjectiveKind.PPO, num_gpus=s.workers, **knobs)
        # Reference copy, value model, rollout buffers and the generation's peak, beyond the update's parts.
        rollout = p.total - (p.weights + p.gradients + p.optimizer + p.zero3_buffer + p.activations)
    else:  # the objective's own shape: preference pairs, a reward model's score head, a full-FT reference
        p = plan_memory(config, method, s.seq_len + adapter_tokens, s.micro_batch, s.workers,
                        objective=kind.value, **knobs)
    weights, grads, opt, trainable = p.weights, p.gradients, p.optimizer, p.trainable_params
    if adapter_tokens:
        layers, hidden = int(config["num_hidden_layers"]), int(config["hidden_size"])
        extra = adapter_tokens * hidden * (2 * layers if s.method is MethodKind.PREFIX else 1)
        trainable = extra
        w, g, k = (2, 2, 16) if sixteen else (4, 4, 8)
        weights, grads, opt = weights + w * extra, grads + g * extra, opt + k * extra
    reference = 0
    if kind in (ObjectiveKind.DPO, ObjectiveKind.KTO) and s.method is MethodKind.FULL:
        # The planner counts the frozen copy in the weights (partitioned like them under ZeRO-3): report it apart.
        reference = (2 if sixteen else 4) * p.params
        if stage == 3:
            reference = 0 if s.offload_params else reference // s.workers
        weights -= reference
    elif kind is ObjectiveKind.DPO and spec.objective.dpo.reference is DpoReference.MODEL_COPY:
        reference = (2 if sixteen else 4) * p.params  # a frozen copy beside the adapters, never partitioned
    total = weights + grads + opt + p.zero3_buffer + p.activations + rollout + reference
    return MemoryNeed(weights, grads, opt, p.activations + rollout, reference, p.zero3_buffer, total, p.params, trainable)


def _candidates(spec: TrainingSpec, s: Setup, devices: int,
                max_accum: int) -> list[tuple[Setup, tuple[tuple[str, str], ...], int]]:
    """Single changes that lower memory, with the request fields they set and their rank (``devices``:
    workers a fix may ask for; ``max_accum``: the largest accumulation a job may ask for)."""
    out: list[tuple[Setup, tuple[tuple[str, str], ...], int]] = []
    if not s.checkpointing:
        out.append((replace(s, checkpointing=True), (("gradient_checkpointing", "true"),), SAME_RESULT))
    if s.workers > 1:
        for stage in (2, 3):
            if s.zero_stage < stage:
                out.append((replace(s, zero_stage=stage), (("resources.zero_stage", str(stage)),), SAME_RESULT))
        if not s.offload_optimizer:
            out.append((replace(s, zero_stage=3, offload_optimizer=True),
                        (("resources.zero_stage", "3"), ("resources.offload_optimizer", "true")), SLOWER))
        if not s.offload_params:
            out.append((replace(s, zero_stage=3, offload_optimizer=True, offload_params=True),
                        (("resources.zero_stage", "3"), ("resources.offload_optimizer", "true"),
                         ("resources.offload_params", "true")), SLOWER))
    if devices > s.workers and s.method is not MethodKind.QLORA:  # bitsandbytes weights do not partition
        more = replace(s, workers=devices, zero_stage=3)
        out.append((more, (("resources.num_workers", str(devices)), ("resources.zero_stage", "3")), SLOWER))
    mb = s.micro_batch // 2
    while mb >= 1 and (accum := s.grad_accum * s.micro_batch // mb) <= max_accum:
        out.append((replace(s, micro_batch=mb, grad_accum=accum),
                    (("hyperparameters.micro_batch_size", str(mb)),
                     ("hyperparameters.gradient_accumulation_steps", str(accum))), SAME_RESULT))
        mb //= 2
    if s.method is MethodKind.FULL:
        out.append((replace(s, method=MethodKind.LORA), (("method.kind", "lora"),), OTHER_METHOD))
    if s.method in (MethodKind.FULL, MethodKind.LORA):
        out.append((replace(s, method=MethodKind.QLORA), (("method.kind", "qlora"),), OTHER_METHOD))
    seq = s.seq_len // 2
    while seq >= 128:
        out.append((replace(s, seq_len=seq), (("data.max_seq_length", str(seq)),), SHORTER_DATA))
        seq //= 2
    return out


def _fixes(spec: TrainingSpec, config: Mapping[str, Any], s: Setup, devices: int, usable: int,
           max_accum: int) -> list[Fix]:
    """Fixes that fit, best first: single changes, and pairs of changes neither of which fits alone
    (checkpointing with ZeRO-3 may beat offload); when none does, the fewest changes that fit together."""
    fits: dict[frozenset[str], Fix] = {}
    misses: list[tuple[Setup, tuple[tuple[str, str], ...], int]] = []
    for setup, changes, rank in _candidates(spec, s, devices, max_accum):
        # Candidates of the same fields come largest first (micro-batch, sequence length): keep the
        # first that fits, the one that gives up least.
        key = _key(changes)
        if key in fits:
            continue
        need = plan(spec, config, setup).total
        if need <= usable:
            fits[key] = Fix(changes, need, rank)
        else:
            misses.append((setup, changes, rank))
    singles = set(fits)
    for first, changes, rank in misses:
        for setup, more, more_rank in _candidates(spec, first, devices, max_accum):
            key = _key(changes + more)
            if {p for p, _ in more} & {p for p, _ in changes} or key in fits or any(k <= key for k in singles):
                continue
            need = plan(spec, config, setup).total
            if need <= usable:
                fits[key] = Fix(changes + more, need, max(rank, more_rank))
    if fits:
        return sorted(fits.values(), key=lambda f: (f.rank, f.total))[:MAX_FIXES]
    return _combined(spec, config, s, devices, usable, max_accum)


def _key(changes: tuple[tuple[str, str], ...]) -> frozenset[str]:
    """What a fix changes (a method change by its value: LoRA and QLoRA are different fixes)."""
    return frozenset(p if p != "method.kind" else f"{p}={v}" for p, v in changes)


def _combined(spec: TrainingSpec, config: Mapping[str, Any], s: Setup, devices: int, usable: int,
              max_accum: int) -> list[Fix]:
    """When no single change fits: changes applied one after another, each time the least disruptive
    one that lowers memory (the lowest need among those), until the job fits (at most six)."""
    changes: dict[str, str] = {}
    current, need, rank = s, plan(spec, config, s).total, SAME_RESULT
    for _ in range(6):
        options = [(r, n, setup, delta) for setup, delta, r in _candidates(spec, current, devices, max_accum)
                   if (n := plan(spec, config, setup).total) < need]
        if not options:
            return []
        fitting = [o for o in options if o[1] <= usable]
        # One that fits now: the least disruptive, giving up least (largest need); else the least
        # disruptive that lowers memory most, and go on from there.
        pick = min(fitting, key=lambda o: (o[0], -o[1])) if fitting else min(options, key=lambda o: (o[0], o[1]))
        r, need, current, delta = pick
        changes.update(delta)
        rank = max(rank, r)
        if need <= usable:
            return [Fix(tuple(changes.items()), need, rank)]
    return []


def assess(spec: TrainingSpec, config: Mapping[str, Any] | None, capacity: ClusterCapacity,
           limits: JobLimits | None = None) -> Assessment:
    """Plan ``spec`` on the cluster (``config``: the base model's ``config.json``; None when unknown).

    Fixes stay within the operator's caps (``limits``) and the workers the cluster declares.

    Never raises for a job that does not fit: the assessment says so (``fits``, ``refusal``).
    """
    r = spec.resources
    device, devices, memory = capacity.device(r.use_gpu)
    usable = int(memory * (1.0 - capacity.margin))
    problems = _device_problems(spec, capacity, device, devices)
    notes: list[str] = []
    need = None
    if config is None:
        notes.append("memory not planned: the base model's config.json could not be read")
    else:
        try:
            need = plan(spec, config, Setup.of(spec))
        except InvalidInput as exc:
            notes.append("memory not planned: " + "; ".join(v.description for v in exc.violations))
    if need is not None and r.num_workers == 1 and (r.zero_stage or r.offload_optimizer):
        notes.append("ZeRO and offload take effect with several workers only: planned as one worker without them")
    if need is not None and spec.objective.kind in PREFERENCE_OBJECTIVES:
        notes.append("preference pairs: chosen and rejected sequences are held at once (2x micro-batch)")
    if memory == 0:
        notes.append(f"{device.upper()} memory is not declared by the operator: not checked")
    over = bool(need is not None and memory and need.total > usable)
    limits = limits or JobLimits()
    fix_devices = min(devices, limits.num_workers)  # 0 when the cluster declares none: no "more workers"
    fixes = _fixes(spec, config or {}, Setup.of(spec), fix_devices, usable, limits.gradient_accumulation_steps) \
        if over else []
    return Assessment(device, r.num_workers, memory, usable, need, tuple(problems), tuple(fixes), tuple(notes), over)


def _device_problems(spec: TrainingSpec, capacity: ClusterCapacity, device: str, devices: int) -> list[FieldViolation]:
    r = spec.resources
    if r.use_gpu and capacity.gpus == 0:
        return [FieldViolation("resources.use_gpu", "this cluster has no GPUs (TUNEFORGE_TRAIN_GPUS=0): train "
                               "on CPU workers (use_gpu false), or ask the operator to declare the GPUs")]
    if devices and r.num_workers > devices:
        setting = "TUNEFORGE_TRAIN_GPUS" if device == "gpu" else "TUNEFORGE_TRAIN_CPU_WORKERS"
        return [FieldViolation("resources.num_workers", f"is {r.num_workers} but this cluster has {devices} "
                               f"{device.upper()} worker(s) ({setting}): ask for at most {devices}")]
    return []


@dataclass(frozen=True)
class JobPlan:
    """EstimateJob's answer: the assessment, steps, tokens and the duration once throughput is known."""

    assessment: Assessment
    total_steps: int = 0
    tokens: int = 0
    tokens_source: str = ""
    tokens_per_second: float = 0.0
    throughput_jobs: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def duration_s(self) -> float | None:
        """Estimated training seconds, or None while throughput (or the token count) is unknown."""
        if self.tokens and self.tokens_per_second > 0:
            return self.tokens / self.tokens_per_second
        return None


def _rows(source: Any, facts: Mapping[str, Any]) -> int | None:
    """Rows a source reads: its split's count, or every row of a version without splits."""
    found = facts.get(source.dataset_version or "") if source is not None else None
    if found is None:
        return None
    counts = found.split_counts
    split = source.split or "train"
    if counts.get(split):
        return int(counts[split])
    return int(sum(counts.values())) or None


def planned_steps_and_tokens(spec: TrainingSpec, facts: Mapping[str, Any],
                             stats: Mapping[str, float]) -> tuple[int, int, str]:
    """(optimizer steps, training tokens, where the tokens come from); 0 where unknown.

    Steps as the engine counts them: ``max_steps``, else epochs x whole steps per epoch (rows per
    step = micro-batch x accumulation x workers; with packing, sequences of ``max_seq_length``
    tokens). Tokens per row: the mean of the training version's token-length stats, capped at
    ``max_seq_length`` (``stats``: ``mean`` per row, as the dataset service recorded it).
    """
    hp, data = spec.hyperparameters, spec.data
    per_step = hp.micro_batch_size * hp.gradient_accumulation_steps * spec.resources.num_workers
    sources = [data.train] if data.train is not None else [m.source for m in data.mixture]
    counted = [_rows(s, facts) for s in sources]
    rows = sum(r for r in counted if r) if counted and all(counted) else 0
    mean = stats.get("mean", 0.0)
    per_row = min(mean, float(data.max_seq_length)) if mean > 0 else 0.0
    sequences = rows
    if data.packing and rows and per_row:
        sequences = max(1, math.ceil(rows * per_row / data.max_seq_length))
    steps = hp.max_steps or (hp.epochs or 1) * (sequences // per_step)
    if not per_row or not steps:
        return steps, 0, ""
    per_sequence = float(data.max_seq_length) if data.packing else per_row
    source = (f"the training version's token statistics (mean {mean:.0f} tokens per row as the dataset service "
              "counted them, whitespace tokens unless recounted; the model's tokenizer usually counts more)")
    return steps, int(steps * per_step * per_sequence), source
