"""The job YAML (the engine's spec shape, ``python -m tuneforge.engine --config``) -> ``CreateJobRequest``.

One file format for both doors. The API decides what the engine decides locally, so a few engine
keys differ: ``model`` names a registered base model (``name``) or a checkpoint (``checkpoint``)
instead of a folder; ``data.*`` points at dataset versions (``dataset_version: dsv_...``) instead
of files; ``tenant`` and ``output`` are set by the service and ignored here. API-only keys:
``suffix``, ``labels``, ``idempotency_key``. Every problem is reported at once, by field.

This module is the one place that knows the mapping (the contract may move to the engine's
``TrainingSpec``; then this becomes a thin adapter).

    >>> req = to_request({"model": {"name": "tiny-base"}, "data": {"train": {"dataset_version": "dsv_1"},
    ...                   "max_seq_length": 96}, "method": {"kind": "lora", "lora": {"r": 8}},
    ...                   "hyperparameters": {"learning_rate": 2e-3, "max_steps": 6}})
    >>> req.base_model, req.hyperparameters.lora_r, req.hyperparameters.max_seq_length, req.method == tr.METHOD_LORA
    ('tiny-base', 8, 96, True)
    >>> to_request({"model": {"name": "m"}, "data": {"train": {"path": "x.jsonl"}}, "hyperparmeters": {}})
    Traceback (most recent call last):
    ...
    tuneforge.client.errors.InvalidArgument: INVALID_ARGUMENT: the job spec has 2 problems
      - hyperparmeters: unknown key; known: data, gradient_checkpointing, hyperparameters, idempotency_key, labels, method, model, objective, output, precision, resources, schedule, suffix, tenant
      - data.train.path: local files cannot be sent to the service; upload it first (`tuneforge datasets upload FILE`) and use dataset_version: <the version id>
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tuneforge.client.errors import FieldViolation, InvalidArgument
from tuneforge.training.v1 import training_pb2 as tr

_TOP = {"model", "data", "method", "objective", "hyperparameters", "resources", "schedule", "precision",
        "gradient_checkpointing", "tenant", "output", "suffix", "labels", "idempotency_key"}
_HP = {"learning_rate", "lr_scheduler", "warmup_steps", "warmup_ratio", "epochs", "max_steps", "micro_batch_size",
       "gradient_accumulation_steps", "weight_decay", "max_grad_norm", "seed"}
_RESOURCES = {"num_workers", "use_gpu", "zero_stage", "offload_optimizer", "offload_params", "max_failures"}
_SCHEDULE = {"eval_every_steps", "early_stopping_patience", "save_every_steps", "keep_best_n", "keep_latest_n",
             "best_metric"}
# The generated enum wrappers (EnumTypeWrapper: keys(), Value()); typed loosely for mypy.
_ENUMS: dict[str, tuple[str, Any]] = {"method": ("METHOD_", tr.Method), "objective": ("OBJECTIVE_", tr.Objective),
          "lr_scheduler": ("LR_SCHEDULER_", tr.LrScheduler), "precision": ("PRECISION_", tr.Precision)}


def load(path: Path) -> tr.CreateJobRequest:
    """Read a job YAML file into a request (raises InvalidArgument naming every bad field)."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(doc, Mapping):
        raise InvalidArgument(f"{path}: a job spec is a YAML mapping", violations=[FieldViolation("", "not a mapping")])
    return to_request(doc)


def to_request(spec: Mapping[str, Any]) -> tr.CreateJobRequest:
    """Map the spec mapping onto a ``CreateJobRequest``; every problem is reported at once."""
    problems: list[FieldViolation] = []
    req = tr.CreateJobRequest()
    _unknown(spec, _TOP, "", problems)
    _model(spec.get("model") or {}, req, problems)
    _data(spec.get("data") or {}, req, problems)
    _method(spec.get("method") or {}, req, problems)
    objective = spec.get("objective") or {}
    _unknown(objective, {"kind", "dpo"}, "objective.", problems)
    _enum(req, "objective", objective.get("kind", "sft"), "objective.kind", problems)
    if "beta" in (objective.get("dpo") or {}):
        req.hyperparameters.dpo_beta = objective["dpo"]["beta"]
    _copy(spec.get("hyperparameters") or {}, _HP, req.hyperparameters, "hyperparameters.", problems)
    _copy(spec.get("resources") or {}, _RESOURCES, req.resources, "resources.", problems)
    _copy(spec.get("schedule") or {}, _SCHEDULE, req.schedule, "schedule.", problems)
    if "precision" in spec:
        _enum(req.hyperparameters, "precision", spec["precision"], "precision", problems)
    req.hyperparameters.gradient_checkpointing = bool(spec.get("gradient_checkpointing", False))
    req.suffix, req.idempotency_key = str(spec.get("suffix", "")), str(spec.get("idempotency_key", ""))
    req.labels.update({str(k): str(v) for k, v in (spec.get("labels") or {}).items()})
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise InvalidArgument(f"the job spec has {len(problems)} {noun}", violations=problems)
    return req


def _unknown(section: Mapping[str, Any], known: set[str], prefix: str, problems: list[FieldViolation]) -> None:
    for key in sorted(set(section) - known):
        problems.append(FieldViolation(f"{prefix}{key}", f"unknown key; known: {', '.join(sorted(known))}"))


def _model(model: Mapping[str, Any], req: tr.CreateJobRequest, problems: list[FieldViolation]) -> None:
    _unknown(model, {"name", "path", "checkpoint"}, "model.", problems)
    ref = model.get("name") or model.get("checkpoint") or model.get("path")
    if not ref:
        problems.append(FieldViolation("model.name", "required: a registered base model name (or model.checkpoint)"))
    req.base_model = str(ref or "")


def _source(src: Mapping[str, Any], where: str, problems: list[FieldViolation]) -> str:
    _unknown(src, {"dataset_version", "path", "split"}, f"{where}.", problems)
    if src.get("path"):
        problems.append(FieldViolation(f"{where}.path", "local files cannot be sent to the service; upload it first "
                                       "(`tuneforge datasets upload FILE`) and use dataset_version: <the version id>"))
    elif not src.get("dataset_version"):
        problems.append(FieldViolation(f"{where}.dataset_version", "required: a dataset version id (dsv_...)"))
    return str(src.get("dataset_version") or "")


def _data(data: Mapping[str, Any], req: tr.CreateJobRequest, problems: list[FieldViolation]) -> None:
    _unknown(data, {"train", "validation", "mixture", "max_seq_length", "packing"}, "data.", problems)
    if data.get("train"):
        req.dataset_version_id = _source(data["train"], "data.train", problems)
    if data.get("validation"):
        req.validation_dataset_version_id = _source(data["validation"], "data.validation", problems)
    for i, comp in enumerate(data.get("mixture") or []):
        _unknown(comp, {"source", "weight", "task"}, f"data.mixture[{i}].", problems)
        version = _source(comp.get("source") or {}, f"data.mixture[{i}].source", problems)
        req.mixture.add(dataset_version_id=version, weight=float(comp.get("weight", 1.0)),
                        task=str(comp.get("task") or ""))
    if not data.get("train") and not data.get("mixture"):
        problems.append(FieldViolation("data.train", "required: data.train.dataset_version (or data.mixture)"))
    if "max_seq_length" in data:
        req.hyperparameters.max_seq_length = int(data["max_seq_length"])
    req.hyperparameters.packing = bool(data.get("packing", False))


def _method(method: Mapping[str, Any], req: tr.CreateJobRequest, problems: list[FieldViolation]) -> None:
    _unknown(method, {"kind", "lora", "qlora", "prefix", "prompt"}, "method.", problems)
    _enum(req, "method", method.get("kind", "lora"), "method.kind", problems)
    lora = method.get("lora") or {}
    _unknown(lora, {"r", "alpha", "dropout", "target_modules"}, "method.lora.", problems)
    hp = req.hyperparameters
    hp.lora_r, hp.lora_alpha = int(lora.get("r", 0)), float(lora.get("alpha", 0))
    hp.lora_dropout = float(lora.get("dropout", 0))
    hp.lora_target_modules.extend(lora.get("target_modules") or [])
    qlora = method.get("qlora") or {}
    _unknown(qlora, {"quant_type"}, "method.qlora.", problems)
    hp.qlora_quant_type = str(qlora.get("quant_type", ""))
    for kind in ("prefix", "prompt"):
        section = method.get(kind) or {}
        _unknown(section, {"num_virtual_tokens"}, f"method.{kind}.", problems)
        if "num_virtual_tokens" in section and method.get("kind") == kind:
            hp.num_virtual_tokens = int(section["num_virtual_tokens"])


def _enum(target: Any, field: str, value: Any, where: str, problems: list[FieldViolation]) -> None:
    prefix, enum = _ENUMS[field]
    name = f"{prefix}{str(value).upper()}"
    if name not in enum.keys():  # noqa: SIM118 - an EnumTypeWrapper, not a dict
        choices = sorted(k[len(prefix):].lower() for k in enum.keys() if not k.endswith("UNSPECIFIED"))  # noqa: SIM118
        problems.append(FieldViolation(where, f"{value!r} is not one of {', '.join(choices)}"))
        return
    setattr(target, field, enum.Value(name))


def _copy(section: Mapping[str, Any], known: set[str], target: Any, prefix: str,
          problems: list[FieldViolation]) -> None:
    _unknown(section, known, prefix, problems)
    for key in sorted(set(section) & known):
        value = section[key]
        if value is None:
            continue
        if key in _ENUMS:
            _enum(target, key, value, f"{prefix}{key}", problems)
            continue
        try:
            setattr(target, key, value)
        except (TypeError, ValueError) as exc:
            problems.append(FieldViolation(f"{prefix}{key}", f"{value!r}: {exc}"))
