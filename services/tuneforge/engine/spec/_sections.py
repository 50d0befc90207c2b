"""Enums, sections and the ``TrainingSpec`` model (internal: import from ``tuneforge.engine.spec``)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    # NaN and infinities are refused everywhere: a NaN passes no range check silently (NaN > 0 is False,
    # but so is NaN <= 1), and no setting of this spec means anything at infinity.
    model_config = ConfigDict(extra="forbid", frozen=False, use_enum_values=False, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------- enums


class ModelDType(enum.Enum):
    """Dtype the base weights are loaded in (``auto``: the precision's dtype)."""

    AUTO = "auto"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class MethodKind(enum.Enum):
    """Which parameters train: all, LoRA adapters, LoRA on a quantized base, prefix or prompt."""

    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"
    PREFIX = "prefix"
    PROMPT = "prompt"


class QuantType(enum.Enum):
    """bitsandbytes quantization of the frozen base for QLoRA."""

    NF4 = "nf4"
    FP4 = "fp4"
    INT8 = "int8"


class ComputeDType(enum.Enum):
    """Dtype bitsandbytes computes in."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class ObjectiveKind(enum.Enum):
    """Training objective."""

    SFT = "sft"
    DPO = "dpo"
    PRETRAIN = "pretrain"
    ORPO = "orpo"
    SIMPO = "simpo"
    KTO = "kto"
    REWARD_MODEL = "reward_model"
    GRPO = "grpo"
    RLOO = "rloo"
    PPO = "ppo"


# Objectives trained on (prompt, chosen, rejected) pairs.
PREFERENCE_OBJECTIVES = frozenset({ObjectiveKind.DPO, ObjectiveKind.ORPO, ObjectiveKind.SIMPO,
                                   ObjectiveKind.REWARD_MODEL})
# Objectives trained on unpaired (prompt, completion, label) records.
LABELLED_OBJECTIVES = frozenset({ObjectiveKind.KTO})


# Online RL objectives: rollouts from prompt-only records, scored by reward functions or a reward model.
ONLINE_RL_OBJECTIVES = frozenset({ObjectiveKind.GRPO, ObjectiveKind.RLOO, ObjectiveKind.PPO})


class RlLossType(enum.Enum):
    """How GRPO's per-token loss is normalised (trl's ``GRPOConfig.loss_type``): ``grpo`` averages per
    sequence, then over sequences; ``bnpo`` over the micro-batch's completion tokens; ``dr_grpo``
    divides by (sequences x max_new_tokens); ``dapo`` by the step's completion tokens (all workers)."""

    DAPO = "dapo"
    GRPO = "grpo"
    BNPO = "bnpo"
    DR_GRPO = "dr_grpo"


class RewardScaling(enum.Enum):
    """GRPO advantage scaling (trl's ``scale_rewards``): by the group's std, the batch's std, or none."""

    GROUP = "group"
    BATCH = "batch"
    NONE = "none"


class RewardFunctionName(enum.Enum):
    """Built-in verifiable rewards (no user code runs): see ``tuneforge.engine.rl.rewards``."""

    EXACT_MATCH = "exact_match"
    CONTAINS_ANSWER = "contains_answer"
    REGEX = "regex"
    LENGTH = "length"
    JSON_VALID = "json_valid"


class DpoLossType(enum.Enum):
    """DPO loss variant."""

    SIGMOID = "sigmoid"
    IPO = "ipo"
    HINGE = "hinge"


class DpoReference(enum.Enum):
    """Where DPO reference log-probs come from."""

    ADAPTER_DISABLED = "adapter_disabled"
    MODEL_COPY = "model_copy"


class LrScheduler(enum.Enum):
    """Learning-rate schedule after warmup."""

    LINEAR = "linear"
    COSINE = "cosine"
    CONSTANT = "constant"


class Precision(enum.Enum):
    """Training numerics (autocast dtype; fp32 master weights)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


ADAPTER_METHODS = frozenset({MethodKind.LORA, MethodKind.QLORA, MethodKind.PREFIX, MethodKind.PROMPT})

ADAPTER_LEARNING_RATE, FULL_LEARNING_RATE = 2e-4, 2e-5
# Step counts beyond this are a typo, not a plan (operators cap lower in the training service).
MAX_STEPS = 10_000_000

# Defaults that depend on another field (see ``TrainingSpec._resolve_dependent_defaults``).
DEPENDENT_DEFAULTS = {
    "hyperparameters.learning_rate": f"{ADAPTER_LEARNING_RATE:g} ({FULL_LEARNING_RATE:g} for method full)",
    "method.lora.alpha": "2 * method.lora.r",
    "precision": "fp32 (bf16 with resources.use_gpu)",
    "hyperparameters.epochs": "1 unless max_steps",
    "objective.dpo.reference": "adapter_disabled for adapters, model_copy for full",
    "objective.kto.reference": "adapter_disabled for adapters, model_copy for full",
    "objective.rl.beta": "0.0 for grpo (trl's GRPOConfig), 0.05 for rloo (trl's RLOOConfig) and ppo (the "
                         "former PPOConfig's kl_coef)",
    "objective.rl.epsilon_high": "objective.rl.epsilon",
}

# ------------------------------------------------------------------------------------- sections


_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class ModelSection(_Strict):
    """The base model: a local folder (``path``), or a registered model or checkpoint (``name``)."""

    path: Path | None = Field(default=None, description="local Hugging Face folder (or the folder holding "
                              "gguf_file)")
    name: str | None = Field(default=None, pattern=_MODEL_NAME, description="a registered base model "
                             "(e.g. smollm2-135m) or a full-weight checkpoint id (ckpt_...), resolved by "
                             "the training service")
    store_uri: str | None = Field(default=None, pattern=r"^(file|s3)://.+", description="object store "
                                  "holding the registered model (set by the training service)")
    manifest_key: str | None = Field(default=None, pattern=r"^tenants/[^?#]+/MANIFEST\.json$",
                                     description="the model's manifest in that store")
    manifest_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the "
                                        "manifest: pins the model's content (the workers' cache key)")
    gguf_file: str | None = Field(default=None, description="GGUF file name inside path")
    dtype: ModelDType = ModelDType.AUTO

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        if (self.path is None) == (self.name is None):
            raise ValueError("path: set exactly one of path (a local folder) or name (a registered model)")
        refs = (self.store_uri, self.manifest_key, self.manifest_sha256)
        if any(refs) and (self.name is None or not all(refs)):
            raise ValueError("store_uri: store_uri, manifest_key and manifest_sha256 go together, with name")
        return self

    @field_validator("gguf_file")
    @classmethod
    def _gguf_name(cls, v: str | None) -> str | None:
        if v is not None and (not v.endswith(".gguf") or "/" in v or v.startswith(".")):
            raise ValueError("must be a file name inside model.path ending in .gguf, e.g. model.Q4_1.gguf")
        return v


def _not_both(a: str, b: str) -> str:
    # "<field>: <text>" lets load_spec attach the violation to the field instead of the section.
    return f"{b}: set {a} or {b}, not both"


_EXCLUSIVE = {
    "data": (("validation", "validation_split_ratio"),),
    "hyperparameters": (("warmup_steps", "warmup_ratio"), ("epochs", "max_steps")),
}


class DataSource(_Strict):
    """Local canonical records (parquet/jsonl file or folder) or a curated dataset version."""

    path: Path | None = Field(default=None, description="local canonical records: a .jsonl/.parquet file "
                              "or a folder of them")
    dataset_version: str | None = Field(default=None, min_length=1, description="a curated dataset version "
                                        "id (dsv_...)")
    split: str | None = Field(default="train", min_length=1, description="split of the dataset version "
                              "(none: every row)")
    store_uri: str | None = Field(default=None, pattern=r"^(file|s3)://.+", description="object store "
                                  "holding the version (set by the training service)")
    manifest_key: str | None = Field(default=None, pattern=r"^tenants/[^?#]+/MANIFEST\.json$",
                                     description="the version's manifest in that store")
    manifest_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="sha256 of "
                                        "the manifest: pins the version's content")

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if (self.path is None) == (self.dataset_version is None):
            raise ValueError("set exactly one of path (local parquet/jsonl) or dataset_version")
        refs = (self.store_uri, self.manifest_key, self.manifest_sha256)
        if any(refs) and (self.dataset_version is None or not all(refs)):
            raise ValueError("store_uri, manifest_key and manifest_sha256 go together, with dataset_version")
        return self


class MixtureComponent(_Strict):
    """One task of a weighted multi-task mixture."""

    source: DataSource
    weight: float = Field(default=1.0, gt=0, le=1e6, description="relative sampling weight")
    task: str | None = Field(default=None, description="task label")


class DataSection(_Strict):
    """Training (and validation) data and how it becomes tokens."""

    train: DataSource | None = None
    validation: DataSource | None = None
    validation_split_ratio: float | None = Field(default=None, gt=0, lt=0.5,
                                                 description="share of train cut off for validation")
    mixture: list[MixtureComponent] = Field(default_factory=list, max_length=64)
    max_seq_length: int = Field(default=1024, ge=8, le=131072, description="tokens per sequence")
    packing: bool = Field(default=False, description="pack several samples into one sequence")
    assistant_only_loss: bool = Field(default=True, description="loss on assistant turns only")

    @model_validator(mode="after")
    def _sources(self) -> DataSection:
        if (self.train is None) == (not self.mixture):
            raise ValueError("train: set exactly one of data.train or data.mixture (a list of weighted sources)")
        if self.validation is not None and self.validation_split_ratio is not None:
            raise ValueError(_not_both("validation", "validation_split_ratio"))
        return self

    @property
    def has_validation(self) -> bool:
        """Whether evaluation data is configured."""
        return self.validation is not None or self.validation_split_ratio is not None


class LoraSettings(_Strict):
    """LoRA adapter shape (also used by QLoRA)."""

    r: int = Field(default=16, gt=0, le=1024, description="adapter rank")
    alpha: float = Field(default=32, gt=0, le=4096, description="scaling; default 2 * r")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] | None = Field(default=None, description="modules to adapt; default per "
                                             "architecture")


class QloraSettings(_Strict):
    """bitsandbytes quantization of the base model."""

    quant_type: QuantType = QuantType.NF4
    double_quant: bool = True
    compute_dtype: ComputeDType = ComputeDType.BFLOAT16


class PrefixSettings(_Strict):
    """Prefix tuning."""

    num_virtual_tokens: int = Field(default=16, gt=0, le=512, description="virtual tokens")


class PromptSettings(_Strict):
    """Prompt tuning (soft prompt); ``init_text`` initialises it from a phrase."""

    num_virtual_tokens: int = Field(default=16, gt=0, le=512, description="virtual tokens")
    init_text: str | None = None


class MethodSection(_Strict):
    """The fine-tuning method and its settings (only the chosen one is used)."""

    kind: MethodKind = MethodKind.LORA
    lora: LoraSettings = Field(default_factory=LoraSettings)
    qlora: QloraSettings = Field(default_factory=QloraSettings)
    prefix: PrefixSettings = Field(default_factory=PrefixSettings)
    prompt: PromptSettings = Field(default_factory=PromptSettings)


class DpoSettings(_Strict):
    """DPO; ``reference`` None resolves to adapter_disabled for adapters, model_copy for full."""

    beta: float = Field(default=0.1, gt=0, le=100, description="strength of the KL penalty")
    loss_type: DpoLossType = DpoLossType.SIGMOID
    reference: DpoReference | None = None


class OrpoSettings(_Strict):
    """ORPO (Hong et al. 2024): chosen NLL minus beta * log sigmoid(log odds ratio); no reference model."""

    beta: float = Field(default=0.1, gt=0, le=100, description="weight of the odds-ratio term (the paper's "
                        "lambda; trl's ORPOConfig.beta)")


class SimpoSettings(_Strict):
    """SimPO (Meng et al. 2024): -log sigmoid(beta * (mean logp chosen - mean logp rejected) - gamma);
    no reference model."""

    beta: float = Field(default=2.0, gt=0, le=100, description="scale of the length-normalised reward")
    gamma: float = Field(default=1.0, ge=0, le=100, description="target reward margin")


class KtoSettings(_Strict):
    """KTO (Ethayarajh et al. 2024) on unpaired completions labelled desirable or undesirable; the KL
    reference point is estimated from mismatched prompt/completion pairs (trl's ``KTOTrainer``).
    ``reference`` None resolves to adapter_disabled for adapters, model_copy for full."""

    beta: float = Field(default=0.1, gt=0, le=100, description="temperature of the implied reward")
    desirable_weight: float = Field(default=1.0, gt=0, le=100, description="loss weight of desirable "
                                    "examples (raise it when they are fewer)")
    undesirable_weight: float = Field(default=1.0, gt=0, le=100, description="loss weight of undesirable "
                                      "examples")
    reference: DpoReference | None = None


class RewardModelSettings(_Strict):
    """Reward model: a sequence-classification head (one score) trained on preference pairs with the
    Bradley-Terry loss -log sigmoid(r_chosen - r_rejected - margin) (trl's ``RewardTrainer``)."""

    margin: float = Field(default=0.0, ge=0, le=100, description="margin of pairs whose record has no "
                          "margin of its own (0: plain Bradley-Terry)")
    center_rewards_coefficient: float = Field(default=0.0, ge=0, le=10, description="weight of "
                                              "mean((r_chosen + r_rejected)^2), keeping rewards centred on 0 "
                                              "(0: off; Eisenstein et al. suggest 0.01)")
class RewardFunction(_Strict):
    """One built-in reward, weighted; ``pattern`` (regex) and ``target_length`` (length) parametrise it."""

    name: RewardFunctionName
    weight: float = Field(default=1.0, ge=-1e3, le=1e3, description="multiplies this reward in the sum")
    pattern: str | None = Field(default=None, min_length=1, max_length=512, description="regex: reward 1 "
                                "when the completion matches (re.search), else 0")
    target_length: int | None = Field(default=None, gt=0, le=100_000, description="length: reward minus "
                                      "the distance in characters to target_length (trl's quick-start reward)")

    @model_validator(mode="after")
    def _parameters(self) -> RewardFunction:
        if self.name is RewardFunctionName.REGEX and self.pattern is None:
            raise ValueError("pattern: the regex reward needs a pattern, e.g. '^<answer>.*</answer>$'")
        if self.name is RewardFunctionName.LENGTH and self.target_length is None:
            raise ValueError("target_length: the length reward needs a target length in characters, e.g. 20")
        if self.pattern is not None and self.name is not RewardFunctionName.REGEX:
            raise ValueError("pattern: only the regex reward takes a pattern; remove it")
        if self.target_length is not None and self.name is not RewardFunctionName.LENGTH:
            raise ValueError("target_length: only the length reward takes a target length; remove it")
        if self.pattern is not None:
            import re

            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern: is not a valid regular expression ({exc}); fix it") from None
        return self


class RlSettings(_Strict):
    """Online RL (GRPO, RLOO, PPO): rollouts, rewards and the clipped policy-gradient loss.

    Defaults follow trl 1.16's ``GRPOConfig`` (beta 0.0, epsilon 0.2, loss_type dapo, scale_rewards
    group, temperature 1.0) and ``RLOOConfig`` (beta 0.05 for RLOO: ``rloo_beta``).
    """

    num_generations: int = Field(default=8, ge=2, le=256, description="completions sampled per prompt (the "
                                 "group); micro_batch_size counts prompts")
    max_new_tokens: int = Field(default=64, ge=1, le=32768, description="tokens per completion")
    temperature: float = Field(default=1.0, gt=0, le=10, description="sampling temperature of rollouts")
    top_p: float = Field(default=1.0, gt=0, le=1, description="nucleus sampling of rollouts")
    beta: float | None = Field(default=None, ge=0, le=100, description="KL coefficient against the frozen "
                               "reference (GRPO: in the loss, default 0.0; RLOO: in the reward, default 0.05)")
    epsilon: float = Field(default=0.2, gt=0, lt=1, description="clip range of the probability ratio (low)")
    epsilon_high: float | None = Field(default=None, gt=0, lt=10, description="upper clip range (default "
                                       "epsilon; DAPO recommends 0.28)")
    loss_type: RlLossType = Field(default=RlLossType.DAPO, description="GRPO loss normalisation")
    scale_rewards: RewardScaling = Field(default=RewardScaling.GROUP, description="GRPO advantage scaling")
    normalize_advantages: bool = Field(default=False, description="RLOO: normalise advantages over the batch")
    rewards: list[RewardFunction] = Field(default_factory=list, max_length=16, description="built-in reward "
                                          "functions, summed with their weights")
    reward_model: str | None = Field(default=None, pattern=_MODEL_NAME, description="a reward-model "
                                     "checkpoint id (ckpt_...) or registered model, resolved by the service")
    reward_model_path: Path | None = Field(default=None, description="local reward-model folder "
                                           "(sequence classification, 1 label; set by the service)")
    reward_model_adapter_path: Path | None = Field(default=None, description="local LoRA adapter of a "
                                                   "reward-model checkpoint, applied on reward_model_path "
                                                   "(set by the service)")
    reward_model_weight: float = Field(default=1.0, ge=-1e3, le=1e3, description="weight of the reward "
                                       "model's score in the sum")
    gamma: float = Field(default=1.0, ge=0, le=1, description="PPO: discount of GAE")
    lam: float = Field(default=0.95, ge=0, le=1, description="PPO: lambda of GAE")
    vf_coef: float = Field(default=0.1, gt=0, le=100, description="PPO: weight of the value loss")
    cliprange_value: float = Field(default=0.2, gt=0, le=100, description="PPO: clip range of the value "
                                   "prediction around its rollout value")


class ObjectiveSection(_Strict):
    """What the loss is."""

    kind: ObjectiveKind = ObjectiveKind.SFT
    dpo: DpoSettings = Field(default_factory=DpoSettings)
    orpo: OrpoSettings = Field(default_factory=OrpoSettings)
    simpo: SimpoSettings = Field(default_factory=SimpoSettings)
    kto: KtoSettings = Field(default_factory=KtoSettings)
    reward_model: RewardModelSettings = Field(default_factory=RewardModelSettings)
    rl: RlSettings = Field(default_factory=RlSettings)


class Hyperparameters(_Strict):
    """Optimisation hyperparameters (AdamW)."""

    learning_rate: float = Field(default=ADAPTER_LEARNING_RATE, gt=0, le=1,
                                 description=f"peak rate; default {FULL_LEARNING_RATE:g} for method full")
    lr_scheduler: LrScheduler = Field(default=LrScheduler.LINEAR, description="decay after warm-up")
    warmup_steps: int | None = Field(default=None, ge=0, le=MAX_STEPS, description="warm-up steps")
    warmup_ratio: float | None = Field(default=None, ge=0, lt=1, description="warm-up share of all steps")
    epochs: int | None = Field(default=None, gt=0, le=1000, description="passes over the data (default 1)")
    max_steps: int | None = Field(default=None, gt=0, le=MAX_STEPS, description="optimizer steps")
    micro_batch_size: int = Field(default=4, gt=0, le=1024, description="sequences per worker per micro-step")
    gradient_accumulation_steps: int = Field(default=1, gt=0, le=1024, description="micro-steps per "
                                             "optimizer step")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay")
    max_grad_norm: float | None = Field(default=1.0, gt=0, le=1e4, description="gradient clipping norm")
    dropout: float | None = Field(default=None, ge=0, lt=1, description="model dropout override")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="seed of sampling and initialisation")

    @model_validator(mode="after")
    def _exclusive(self) -> Hyperparameters:
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError(_not_both("warmup_steps", "warmup_ratio"))
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError(_not_both("epochs", "max_steps"))
        if self.epochs is None and self.max_steps is None:
            self.epochs = 1
        return self


class ResourcesSection(_Strict):
    """Ray workers and DeepSpeed ZeRO."""

    num_workers: int = Field(default=1, ge=1, le=1024, description="Ray workers (one per GPU)")
    use_gpu: bool = Field(default=False, description="one GPU per worker")
    cpus_per_worker: int = Field(default=1, ge=1, le=256, description="CPUs per worker")
    zero_stage: int = Field(default=0, ge=0, le=3, description="DeepSpeed ZeRO stage (0 = DDP)")
    offload_optimizer: bool = Field(default=False, description="optimizer state in CPU memory")
    offload_params: bool = Field(default=False, description="parameters in CPU memory (ZeRO-3)")
    ray_address: str | None = Field(default=None, description="Ray cluster (none: local)")
    object_store_memory_mb: int = Field(default=512, ge=80, le=1 << 20, description="local Ray object store")
    max_failures: int = Field(default=3, ge=0, le=100, description="restarts before failing: worker-group restarts, and runs again after the Ray cluster was unreachable")


class ScheduleSection(_Strict):
    """Evaluation, early stopping and checkpoint retention."""

    eval_every_steps: int | None = Field(default=None, gt=0, le=MAX_STEPS, description="evaluate every N "
                                         "steps (none: at the end)")
    early_stopping_patience: int | None = Field(default=None, gt=0, le=10_000, description="evaluations "
                                                "without improvement before stopping")
    save_every_steps: int | None = Field(default=None, gt=0, le=MAX_STEPS, description="checkpoint every N "
                                         "steps (none: at the end)")
    keep_best_n: int = Field(default=2, ge=0, le=100, description="best checkpoints kept")
    keep_latest_n: int = Field(default=1, ge=1, le=100, description="latest checkpoints kept")
    best_metric: str = Field(default="eval_loss", min_length=1, max_length=64, description="ranks checkpoints")
    greater_is_better: bool = Field(default=False, description="whether best_metric improves upwards")
    log_every_steps: int = Field(default=1, gt=0, le=MAX_STEPS, description="metrics every N steps")


class OutputSection(_Strict):
    """Where checkpoints go."""

    checkpoint_uri: str = Field(pattern=r"^(file|s3)://.+")
    checkpoint_prefix: str = Field(
        default="",
        pattern=r"^([a-z0-9][a-z0-9._-]*/)*$",
        description="folder inside the store above the run (e.g. tenants/acme/checkpoints/), ending in '/'",
    )
    run_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class IntegrationKind(enum.Enum):
    """A tracking tool a job reports its metrics to (besides its own event log and metrics file)."""

    TENSORBOARD = "tensorboard"
    MLFLOW = "mlflow"
    WANDB = "wandb"


_SECRET_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class Integration(_Strict):
    """One tracking tool (OpenAI's ``integrations``). Credentials are never part of a spec: ``secret``
    names a secret the operator configured for the tenant, which holds them."""

    kind: IntegrationKind
    project: str = Field(default="tuneforge", pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$",
                         description="MLflow experiment / W&B project")
    run_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                                 description="the run's name in the tool (default: the job id)")
    secret: str | None = Field(default=None, pattern=_SECRET_NAME, description="name of an integration "
                               "secret the operator configured for the tenant (W&B: WANDB_API_KEY; MLflow: "
                               "MLFLOW_TRACKING_URI); never a key itself")


class ReportingSection(_Strict):
    """Where metrics are reported besides the job's own event log."""

    integrations: list[Integration] = Field(default_factory=list, max_length=8,
                                            description="tracking tools, at most one of each kind")

    @model_validator(mode="after")
    def _one_of_each(self) -> ReportingSection:
        kinds = [i.kind for i in self.integrations]
        if len(kinds) != len(set(kinds)):
            raise ValueError("integrations: name each kind at most once (tensorboard, mlflow, wandb)")
        return self


_TENANT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class _TopLevelScalars(_Strict):
    precision: Precision = Field(default=Precision.FP32, description="numerics; default bf16 with use_gpu")
    gradient_checkpointing: bool = Field(default=False, description="recompute activations in backward")
    tenant: str = Field(pattern=_TENANT_PATTERN)


class TrainingSpec(_TopLevelScalars):
    """A whole training job. Build it with ``load_spec`` to get every problem reported at once."""

    model: ModelSection
    data: DataSection
    method: MethodSection = Field(default_factory=MethodSection)
    objective: ObjectiveSection = Field(default_factory=ObjectiveSection)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    output: OutputSection
    reporting: ReportingSection = Field(default_factory=ReportingSection)

    @model_validator(mode="after")
    def _cross_fields(self) -> TrainingSpec:
        from tuneforge.engine.spec._checks import cross_field_violations

        problems = cross_field_violations(dict(self))
        if problems:
            raise ValueError("; ".join(str(p) for p in problems))
        self._resolve_dependent_defaults()
        return self

    def _resolve_dependent_defaults(self) -> None:
        """Defaults that depend on another field, applied where the field was not given (the one place
        these rules live; ``DEPENDENT_DEFAULTS`` documents them)."""
        hp, lora = self.hyperparameters, self.method.lora
        if "learning_rate" not in hp.model_fields_set and self.method.kind is MethodKind.FULL:
            hp.learning_rate = FULL_LEARNING_RATE
        if "alpha" not in lora.model_fields_set:
            lora.alpha = 2.0 * lora.r
        if "precision" not in self.model_fields_set and self.resources.use_gpu:
            self.precision = Precision.BF16
        rl = self.objective.rl
        if rl.beta is None and self.objective.kind in ONLINE_RL_OBJECTIVES:
            rl.beta = 0.0 if self.objective.kind is ObjectiveKind.GRPO else 0.05
        if rl.epsilon_high is None and self.objective.kind in ONLINE_RL_OBJECTIVES:
            rl.epsilon_high = rl.epsilon
        dpo = self.objective.dpo
        if self.objective.kind is ObjectiveKind.DPO and dpo.reference is None:
            dpo.reference = DpoReference.ADAPTER_DISABLED if self.is_adapter else DpoReference.MODEL_COPY
        kto = self.objective.kto
        if self.objective.kind is ObjectiveKind.KTO and kto.reference is None:
            kto.reference = DpoReference.ADAPTER_DISABLED if self.is_adapter else DpoReference.MODEL_COPY

    @property
    def is_adapter(self) -> bool:
        """Whether only adapter parameters train (LoRA, QLoRA, prefix, prompt)."""
        return self.method.kind in ADAPTER_METHODS

    def resolved_dict(self) -> dict[str, Any]:
        """The spec with defaults filled in, JSON-safe (Enums as values, paths as strings)."""
        return self.model_dump(mode="json")


_SECTIONS: dict[str, type[BaseModel]] = {
    name: field.annotation  # type: ignore[misc]  # each section field is annotated with its model class
    for name, field in TrainingSpec.model_fields.items()
    if name not in _TopLevelScalars.model_fields
}
