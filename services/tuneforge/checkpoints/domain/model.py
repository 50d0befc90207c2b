"""Checkpoint domain types: manifests, aliases, retention policies and pins.

A checkpoint is a folder of files in the object store plus a *manifest* (files with sizes and
sha256, step, metrics, resolved config, lineage). The manifest is committed last; until then the
checkpoint does not exist for readers. Plain dataclasses: no grpc, sqlalchemy or minio here.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from tuneforge.common.errors import FieldViolation, InvalidInput
from tuneforge.common.public_text import echo

MANIFEST_SCHEMA = 1
LATEST = "latest"
BEST = "best"
SYSTEM_ALIASES = frozenset({LATEST, BEST})
"""Aliases the service moves itself after every registration and deletion."""
SERVICE_ONLY_ALIASES = frozenset({LATEST})
"""System aliases SetAlias refuses. ``best`` is not among them: the service points it at the best
checkpoint by the retention metric on every registration, and an evaluation that found a better
one by its own measure may move it explicitly (until the next registration re-ranks)."""

DEFAULT_METRIC = "eval_loss"
_ALIAS = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_JOB = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class CheckpointKind(enum.Enum):
    """What a checkpoint holds."""

    FULL = "full"
    LORA = "lora"
    PREFIX = "prefix"


class ModelHead(enum.Enum):
    """What a checkpoint's model computes, read from the training spec it was registered with."""

    UNSPECIFIED = "unspecified"
    CAUSAL_LM = "causal_lm"
    REWARD_MODEL = "reward_model"


def head_of(config: Mapping[str, Any]) -> ModelHead:
    """The head of a model trained with the resolved spec ``config`` (objective ``reward_model``: a
    reward model; any other objective: a causal LM; no spec: unspecified)."""
    objective = config.get("objective") if isinstance(config, Mapping) else None
    kind = objective.get("kind") if isinstance(objective, Mapping) else None
    if not kind:
        return ModelHead.UNSPECIFIED
    return ModelHead.REWARD_MODEL if kind == "reward_model" else ModelHead.CAUSAL_LM


class CheckpointOrder(enum.Enum):
    """How a list of checkpoints is ordered."""

    STEP = "step"
    METRIC = "metric"


class ExportFormat(enum.Enum):
    """Export formats: merged LoRA, adapter alone, or a full fine-tune."""

    MERGED = "merged"
    ADAPTER = "adapter"
    FULL = "full"


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint: path relative to the checkpoint folder, size, hex sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Lineage:
    """Where a checkpoint came from."""

    job_id: str = ""
    dataset_version_id: str = ""
    base_model: str = ""
    parent_checkpoint_id: str = ""
    tuneforge_version: str = ""


@dataclass(frozen=True)
class CheckpointDraft:
    """A checkpoint as the engine announces it, before the service has checked it."""

    job_id: str
    step: int
    kind: CheckpointKind
    prefix: str
    files: tuple[FileEntry, ...]
    metrics: Mapping[str, float] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    lineage: Lineage = field(default_factory=Lineage)

    def content_digest(self) -> str:
        """A sha256 over everything registration promises to keep (idempotency key content)."""
        doc = {
            "job_id": self.job_id,
            "step": self.step,
            "kind": self.kind.value,
            "prefix": self.prefix,
            "files": sorted([f.path, f.size, f.sha256] for f in self.files),
            "metrics": dict(sorted(self.metrics.items())),
            "config": self.config,
            "lineage": vars(self.lineage),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A committed checkpoint.

    Attributes:
        checkpoint_id: ``ckpt_<hex>``, unique across tenants.
        tenant: owning tenant; every read is confined to it.
        draft: what was registered.
        digest: ``draft.content_digest()``, compared on re-registration.
        create_time: commit time (UTC).
        aliases: names of the aliases pointing here when it was read.
    """

    checkpoint_id: str
    tenant: str
    draft: CheckpointDraft
    digest: str
    create_time: datetime
    aliases: tuple[str, ...] = ()

    @property
    def job_id(self) -> str:
        return self.draft.job_id

    @property
    def step(self) -> int:
        return self.draft.step

    @property
    def metrics(self) -> Mapping[str, float]:
        return self.draft.metrics

    @property
    def head(self) -> ModelHead:
        """What the model computes (a reward model or a causal LM), from its training spec."""
        return head_of(self.draft.config)

    def file(self, path: str) -> FileEntry:
        """The entry for ``path``.

        Raises:
            InvalidInput: the manifest lists no such file (the message lists what it has).
        """
        for entry in self.draft.files:
            if entry.path == path:
                return entry
        known = ", ".join(f.path for f in self.draft.files[:10])
        raise InvalidInput.field_error(
            "path", f"checkpoint {self.checkpoint_id} has no file {echo(path)}; its files are: {known}"
        )

    def with_aliases(self, aliases: tuple[str, ...]) -> Manifest:
        return replace(self, aliases=tuple(sorted(aliases)))

    def to_document(self) -> dict[str, Any]:
        """The JSON document written as the checkpoint's manifest object."""
        d = self.draft
        return {
            "schema": MANIFEST_SCHEMA,
            "checkpoint_id": self.checkpoint_id,
            "tenant": self.tenant,
            "job_id": d.job_id,
            "step": d.step,
            "kind": d.kind.value,
            "prefix": d.prefix,
            "files": [vars(f) for f in d.files],
            "metrics": dict(d.metrics),
            "config": d.config,
            "lineage": vars(d.lineage),
            "digest": self.digest,
            "create_time": self.create_time.isoformat(),
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Manifest:
        """Rebuild a manifest from ``to_document`` output."""
        draft = CheckpointDraft(
            job_id=doc["job_id"],
            step=int(doc["step"]),
            kind=CheckpointKind(doc["kind"]),
            prefix=doc["prefix"],
            files=tuple(FileEntry(f["path"], int(f["size"]), f["sha256"]) for f in doc["files"]),
            metrics={k: float(v) for k, v in doc["metrics"].items()},
            config=doc.get("config") or {},
            lineage=Lineage(**doc.get("lineage", {})),
        )
        return cls(
            checkpoint_id=doc["checkpoint_id"],
            tenant=doc["tenant"],
            draft=draft,
            digest=doc["digest"],
            create_time=datetime.fromisoformat(doc["create_time"]),
        )


@dataclass(frozen=True)
class AliasMove:
    """One past (or the current) target of an alias."""

    checkpoint_id: str
    time: datetime


@dataclass(frozen=True)
class Alias:
    """An alias and its history (newest first; the first entry is the current target)."""

    job_id: str
    name: str
    checkpoint_id: str
    history: tuple[AliasMove, ...] = ()


@dataclass(frozen=True)
class RetentionPolicy:
    """Per job: keep the best ``keep_best_n`` by ``metric`` plus the latest ``keep_latest_m`` by step."""

    keep_best_n: int = 0
    keep_latest_m: int = 1
    metric: str = DEFAULT_METRIC
    greater_is_better: bool = False

    def violations(self) -> list[FieldViolation]:
        """Every problem with the policy, each naming the field and the fix."""
        out: list[FieldViolation] = []
        if not 0 <= self.keep_best_n <= MAX_KEEP:
            out.append(FieldViolation("policy.keep_best_n", f"must be in 0..{MAX_KEEP}"))
        if not 0 <= self.keep_latest_m <= MAX_KEEP:
            out.append(FieldViolation("policy.keep_latest_m", f"must be in 0..{MAX_KEEP}"))
        if self.keep_best_n <= 0 and self.keep_latest_m <= 0:
            out.append(FieldViolation(
                "policy.keep_latest_m",
                "a policy keeping nothing would delete every unaliased checkpoint: "
                "set keep_latest_m >= 1 or keep_best_n >= 1",
            ))
        if self.keep_best_n > 0 and not self.metric:
            out.append(FieldViolation("policy.metric", "is empty: name the metric ranking checkpoints"))
        return out


@dataclass(frozen=True)
class Pin:
    """A running job resumes from (or otherwise uses) a checkpoint: retention must not touch it."""

    checkpoint_id: str
    holder: str
    create_time: datetime


def check_job_id(job_id: str, field_name: str = "job_id") -> FieldViolation | None:
    """Return a violation when ``job_id`` is not ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``."""
    if not _JOB.fullmatch(job_id or ""):
        return FieldViolation(field_name, f"{echo(job_id)} is not a job id: use letters, digits, '.', '_', '-'")
    return None


def check_alias_name(name: str) -> None:
    """Raise ``InvalidInput`` unless ``name`` is ``[a-z0-9][a-z0-9-]{0,62}``."""
    if not _ALIAS.fullmatch(name or ""):
        raise InvalidInput.field_error(
            "alias", f"{echo(name)} is not an alias name: use 1-63 lowercase letters, digits or '-'"
        )


def _path_problem(path: str) -> str | None:
    if not path or path.startswith("/") or "\\" in path:
        return "must be a non-empty relative path with '/' separators"
    if any(seg in ("", ".", "..") for seg in path.split("/")):
        return "must not contain empty, '.' or '..' segments"
    return None


# Weights are safetensors only. Pickle files are accepted for the trainer's resume state alone
# (optimizer, scheduler, RNG, DeepSpeed partitions: the engine loads them with weights_only=True);
# any other pickle (pytorch_model.bin, adapter_model.bin, *.pkl ...) is refused at registration.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
_RESUME_STATE = re.compile(r"(?:.*/)?(?:training_state|rng_state|optimizer|scheduler)[\w.-]*\.pt|deepspeed/.*\.pt")


MAX_KEEP = 10_000  # checkpoints a retention policy keeps per rule (more is "keep everything")


def is_refused_pickle(path: str) -> bool:
    """A pickle file that is not resume state (see ``PICKLE_SUFFIXES``)."""
    return PurePosixPath(path).suffix.lower() in PICKLE_SUFFIXES and not _RESUME_STATE.fullmatch(path)


def has_safetensors(draft: CheckpointDraft) -> bool:
    """Whether the checkpoint holds weights an export can load (``*.safetensors``)."""
    return any(f.path.endswith(".safetensors") for f in draft.files)


def draft_violations(draft: CheckpointDraft) -> list[FieldViolation]:
    """Every problem of a registration request at once."""
    out: list[FieldViolation] = []
    if v := check_job_id(draft.job_id):
        out.append(v)
    if draft.step < 0:
        out.append(FieldViolation("step", f"{draft.step} is negative: give the optimizer step (>= 0)"))
    if problem := _path_problem(draft.prefix):
        out.append(FieldViolation("prefix", f"{echo(draft.prefix)} {problem}"))
    if not draft.files:
        out.append(FieldViolation("files", "is empty: list every file written with its size and sha256"))
    seen: set[str] = set()
    for i, f in enumerate(draft.files):
        if problem := _path_problem(f.path):
            out.append(FieldViolation(f"files[{i}].path", f"{echo(f.path)} {problem}"))
        elif is_refused_pickle(f.path):
            out.append(FieldViolation(f"files[{i}].path", f"{echo(f.path)} is a pickle file: weights are accepted "
                                      "as safetensors only (save with safe_serialization=True)"))
        if f.path in seen:
            out.append(FieldViolation(f"files[{i}].path", f"{echo(f.path)} is listed twice"))
        seen.add(f.path)
        if f.size < 0:
            out.append(FieldViolation(f"files[{i}].size", "is negative"))
        if not _SHA256.fullmatch(f.sha256):
            out.append(FieldViolation(f"files[{i}].sha256", "must be 64 lowercase hex digits"))
    for name, value in draft.metrics.items():
        if not math.isfinite(value):
            out.append(FieldViolation(f"metrics[{name}]", f"{value} is not finite"))
    return out
