"""The job YAML -> ``CreateJobRequest``: the engine's spec shape, read by the engine's own validator
(``tuneforge.engine.spec.load_spec``) and mapped by the training service's one mapping
(``tuneforge.training.convert``, fields by name plus its ``RENAMED`` table). No second mapping lives here.

One file format for both doors (``python -m tuneforge.engine --config job.yaml`` and
``tuneforge jobs create -f job.yaml``), with what the service decides itself: ``model.name`` names a
registered base model or a checkpoint, ``data.*.dataset_version`` names uploaded data, and
``tenant``/``output``/``resources.ray_address`` are the service's (ignored here). API-only keys:
``suffix``, ``labels``, ``idempotency_key``. A spec field the API cannot carry (a local path, an
engine-only setting) and every unknown key are refused, each named by its YAML path, all at once.

    >>> req = to_request({"model": {"name": "tiny-base"}, "data": {"train": {"dataset_version": "dsv_1"},
    ...                   "max_seq_length": 96}, "method": {"kind": "lora", "lora": {"r": 8}},
    ...                   "objective": {"kind": "orpo", "orpo": {"beta": 0.2}},
    ...                   "hyperparameters": {"learning_rate": "2e-3", "max_steps": 6}})
    >>> req.base_model, req.hyperparameters.lora_r, req.hyperparameters.orpo_beta, req.objective == tr.OBJECTIVE_ORPO
    ('tiny-base', 8, 0.2, True)
    >>> req.hyperparameters.learning_rate, req.hyperparameters.max_seq_length
    (0.002, 96)
    >>> to_request({"model": {"name": "m"}, "data": {"train": {"path": "x.jsonl"}}, "hyperparmeters": {}})
    Traceback (most recent call last):
    ...
    tuneforge.client.errors.InvalidArgument: INVALID_ARGUMENT: the job spec has 2 problems
      - hyperparmeters: unknown key; did you mean 'hyperparameters'?
      - data.train.path: local files cannot be sent to the service: upload it first (`tuneforge datasets upload FILE`) and use dataset_version: <the version id>
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from tuneforge.client.errors import FieldViolation, InvalidArgument
from tuneforge.common.errors import InvalidInput
from tuneforge.engine.spec import ONLINE_RL_OBJECTIVES, load_spec
from tuneforge.training import convert
from tuneforge.training.v1 import training_pb2 as tr

# Keys of the request that are not training settings.
API_ONLY = ("suffix", "labels", "idempotency_key")
# Spec fields the training service sets itself: a YAML written for the engine may carry them.
SERVICE_OWNED = ("tenant", "output", "resources.ray_address")
_PLACEHOLDERS = {"tenant": "client-side-check", "output": {"checkpoint_uri": "file:///client-side-check",
                                                           "run_name": "client-side-check"}}
_SETTABLE = frozenset(spec for _, spec in convert.TABLE)
_INDEX = re.compile(r"\[\d+\]")
_REMEDIES = {
    "data": "local files cannot be sent to the service: upload it first (`tuneforge datasets upload FILE`) and "
            "use dataset_version: <the version id>",
    "model": "the service trains registered models: name one with model.name (a base model or a ckpt_... id)",
}


def load(path: Path | str) -> tr.CreateJobRequest:
    """Read a job YAML file into a request (raises InvalidArgument naming every bad field)."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidArgument(f"{path} is not valid YAML{where}: fix the syntax",
                              violations=[FieldViolation("", f"not valid YAML{where}")]) from None
    return to_request(doc or {})


def to_request(spec: Mapping[str, Any]) -> tr.CreateJobRequest:
    """Map a job spec mapping onto a ``CreateJobRequest``; every problem is reported at once."""
    if not isinstance(spec, Mapping):
        raise InvalidArgument("a job spec is a YAML mapping of sections (model:, data:, method:, ...)",
                              violations=[FieldViolation("", "not a mapping")])
    training = {k: v for k, v in spec.items() if k not in API_ONLY}
    problems: list[FieldViolation] = []
    resolved: dict[str, Any] = {}
    try:
        resolved = load_spec(_as_the_service_sees_it(training)).resolved_dict()
    except InvalidInput as exc:
        problems += [FieldViolation(v.field, v.description) for v in exc.violations]
    for path in _leaves(training):
        if not _settable(path) and not any(path == p.field or path.startswith(p.field + ".") for p in problems):
            problems.append(FieldViolation(path, _REMEDIES.get(path.split(".")[0], "")
                                           if path.endswith(".path") else
                                           "is an engine-only setting the training service does not take: "
                                           "remove it, or run the engine directly (python -m tuneforge.engine)"))
    labels = spec.get("labels") or {}
    if not isinstance(labels, Mapping):
        problems.append(FieldViolation("labels", "is a mapping of label keys to values"))
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise InvalidArgument(f"the job spec has {len(problems)} {noun}", violations=problems)
    doc = _typed(training, resolved)
    for api in convert.REQUIRED:  # the API wants these said; a YAML may leave them to the spec's defaults
        path = next(spec for a, spec in convert.TABLE if a == api)
        section, _, name = path.rpartition(".")
        target = doc.setdefault(section, {}) if section else doc
        target.setdefault(name, resolved[section][name] if section else resolved[name])
    req = convert.request_from_spec(doc)
    req.suffix, req.idempotency_key = str(spec.get("suffix") or ""), str(spec.get("idempotency_key") or "")
    req.labels.update({str(k): str(v) for k, v in labels.items()})
    return req


def _as_the_service_sees_it(training: Mapping[str, Any]) -> dict[str, Any]:
    """The spec as the service will check it: its own tenant and output, and (like the service) the
    training version's validation split as validation data when none is named, online RL excepted)."""
    doc = {**_PLACEHOLDERS, **training}
    data = doc.get("data")
    objective = doc.get("objective")
    online = isinstance(objective, Mapping) and objective.get("kind") in {k.value for k in ONLINE_RL_OBJECTIVES}
    if isinstance(data, Mapping) and isinstance(data.get("train"), Mapping) and data["train"].get("dataset_version") \
            and data.get("validation") is None and data.get("validation_split_ratio") is None \
            and not online:  # online RL has no validation loss: the service defaults none in
        doc["data"] = {**data, "validation": {"dataset_version": data["train"]["dataset_version"], "split": "validation"}}
    return doc


def _leaves(doc: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths (``data.mixture[0].weight``) of every value the mapping sets, service-owned ones left out."""
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if path in SERVICE_OWNED:
            continue
        if isinstance(value, Mapping):
            yield from _leaves(value, path + ".")
        elif isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                yield from _leaves(item, f"{path}[{i}].") if isinstance(item, Mapping) else iter((f"{path}[{i}]",))
        else:
            yield path


def _settable(path: str) -> bool:
    return _INDEX.sub("[]", path) in _SETTABLE


def _typed(raw: Any, resolved: Any) -> Any:
    """The keys the YAML sets, with the validated values (``"2e-3"`` -> 0.002, ``LoRA`` casing...)."""
    if isinstance(raw, Mapping) and isinstance(resolved, Mapping):
        return {k: _typed(v, resolved.get(k)) for k, v in raw.items() if k in resolved and k not in ("tenant", "output")}
    if isinstance(raw, list) and isinstance(resolved, list) and any(isinstance(v, Mapping) for v in raw):
        return [_typed(r, s) for r, s in zip(raw, resolved, strict=False)]
    return resolved
