"""The typed training spec: what to train, on what, how, where it goes.

Public API:
    load_spec(source) -> TrainingSpec
        ``source`` is a YAML file path, a YAML string or a mapping. Every problem is reported at once
        as ``errors.InvalidInput`` with one ``FieldViolation`` per bad field (dotted path such as
        ``hyperparameters.learning_rate``) and the fix; unknown keys get a did-you-mean suggestion.
        Field problems of all sections and cross-field problems are collected together (a
        cross-field check runs when the sections it reads are themselves valid).
    TrainingSpec: pydantic v2 model (``extra="forbid"`` everywhere, Enums for every choice).
        ``spec.resolved_dict()`` -> JSON-safe dict with defaults filled in (saved beside checkpoints);
        ``load_spec(spec.resolved_dict())`` gives an equal spec.
    Sections: ModelSection, DataSection (DataSource, MixtureComponent), MethodSection (LoraSettings,
        QloraSettings, PrefixSettings, PromptSettings), ObjectiveSection (DpoSettings, OrpoSettings,
        SimpoSettings, KtoSettings, RewardModelSettings, RlSettings, RewardFunction),
        Hyperparameters, ResourcesSection, ScheduleSection, OutputSection, ReportingSection (Integration).
    Enums: ModelDType, MethodKind, QuantType, ComputeDType, ObjectiveKind, DpoLossType, DpoReference,
        LrScheduler, Precision, IntegrationKind, RlLossType, RewardScaling, RewardFunctionName.

``trust_remote_code`` is deliberately not a field: model code from a folder is never run. LoRA
``target_modules=None`` means the per-architecture default (``models.targets``), resolved at load.
This package imports neither torch nor transformers. Internals: ``_sections`` (models), ``_checks``
(cross-field checks), ``_report`` (error messages).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tuneforge.common.errors import FieldViolation, InvalidInput
from tuneforge.engine.spec._checks import cross_field_violations
from tuneforge.engine.spec._report import _HINTS, _unknown_key_fix, violations_from_validation_error
from tuneforge.engine.spec._sections import (
    _EXCLUSIVE,
    _SECTIONS,
    ADAPTER_LEARNING_RATE,
    ADAPTER_METHODS,
    DEPENDENT_DEFAULTS,
    FULL_LEARNING_RATE,
    LABELLED_OBJECTIVES,
    MAX_STEPS,
    ONLINE_RL_OBJECTIVES,
    PREFERENCE_OBJECTIVES,
    ComputeDType,
    DataSection,
    DataSource,
    DpoLossType,
    DpoReference,
    DpoSettings,
    Hyperparameters,
    Integration,
    IntegrationKind,
    KtoSettings,
    LoraSettings,
    LrScheduler,
    MethodKind,
    MethodSection,
    MixtureComponent,
    ModelDType,
    ModelSection,
    ObjectiveKind,
    ObjectiveSection,
    OrpoSettings,
    OutputSection,
    Precision,
    PrefixSettings,
    PromptSettings,
    QloraSettings,
    QuantType,
    ReportingSection,
    ResourcesSection,
    RewardFunction,
    RewardFunctionName,
    RewardModelSettings,
    RewardScaling,
    RlLossType,
    RlSettings,
    ScheduleSection,
    SimpoSettings,
    TrainingSpec,
    _not_both,
    _TopLevelScalars,
)

__all__ = [
    "ADAPTER_LEARNING_RATE",
    "ADAPTER_METHODS",
    "DEPENDENT_DEFAULTS",
    "FULL_LEARNING_RATE",
    "LABELLED_OBJECTIVES",
    "MAX_STEPS",
    "ONLINE_RL_OBJECTIVES",
    "PREFERENCE_OBJECTIVES",
    "ComputeDType",
    "DataSection",
    "DataSource",
    "DpoLossType",
    "DpoReference",
    "DpoSettings",
    "Hyperparameters",
    "Integration",
    "IntegrationKind",
    "KtoSettings",
    "LoraSettings",
    "LrScheduler",
    "MethodKind",
    "MethodSection",
    "MixtureComponent",
    "ModelDType",
    "ModelSection",
    "ObjectiveKind",
    "ObjectiveSection",
    "OrpoSettings",
    "OutputSection",
    "Precision",
    "PrefixSettings",
    "PromptSettings",
    "QloraSettings",
    "QuantType",
    "ReportingSection",
    "ResourcesSection",
    "RewardFunction",
    "RewardFunctionName",
    "RewardModelSettings",
    "RewardScaling",
    "RlLossType",
    "RlSettings",
    "ScheduleSection",
    "SimpoSettings",
    "TrainingSpec",
    "cross_field_violations",
    "load_spec",
    "violations_from_validation_error",
]

# ------------------------------------------------------------------------------------- loading


def _read_source(source: Path | str | Mapping[str, Any]) -> Any:
    if isinstance(source, Mapping):
        return dict(source)
    is_file_name = isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml"))
    if isinstance(source, Path) or is_file_name:
        path = Path(source)
        if not path.is_file():
            raise InvalidInput.field_error("spec", f"file {path} does not exist; pass a YAML file path")
        source = path.read_text(encoding="utf-8")
    try:
        return yaml.safe_load(source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidInput.field_error("spec", f"is not valid YAML{where}; fix the syntax") from None


def _partial(cls: type[BaseModel], raw: Any) -> BaseModel:
    """A section holding only the fields of ``raw`` that are valid on their own (for cross checks)."""
    section = cls.model_construct()
    for key, value in raw.items() if isinstance(raw, Mapping) else ():
        if key in cls.model_fields:
            try:
                cls.__pydantic_validator__.validate_assignment(section, key, value)
            except ValidationError:
                continue
    return section


def _validate_sections(
    raw: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], list[FieldViolation]]:
    """Validate each top-level section on its own, so that every section reports its problems.

    Returns the valid sections, best-effort partial versions of the invalid ones, and the problems.
    """
    good: dict[str, Any] = {}
    partial: dict[str, Any] = {}
    problems = [
        FieldViolation(str(key), _unknown_key_fix(str(key), list(TrainingSpec.model_fields)))
        for key in raw
        if key not in TrainingSpec.model_fields
    ]
    for name, cls in _SECTIONS.items():
        if name not in raw:
            if TrainingSpec.model_fields[name].is_required():
                problems.append(FieldViolation(name, f"is required; add a '{name}:' section"))
            continue
        section = raw[name] if raw[name] is not None else {}
        try:
            good[name] = cls.model_validate(section)
        except ValidationError as exc:
            found = violations_from_validation_error(exc, prefix=name, model=cls)
            # A section's own "not both" checks do not run when a field failed: check them here.
            found += [v for v in _raw_exclusive(name, section) if v not in found]
            problems.extend(found)
            partial[name] = _partial(cls, section)
    for name in _TopLevelScalars.model_fields:
        if name not in raw:
            continue
        try:
            good[name] = getattr(_TopLevelScalars.model_validate({"tenant": "x", name: raw[name]}), name)
        except ValidationError as exc:
            problems.extend(violations_from_validation_error(exc, model=_TopLevelScalars))
    if "tenant" not in raw:
        problems.append(FieldViolation("tenant", f"is required; {_HINTS['tenant']}"))
    return good, partial, problems


def _raw_exclusive(section: str, raw: Any) -> list[FieldViolation]:
    if not isinstance(raw, Mapping):
        return []
    return [
        FieldViolation(f"{section}.{b}", _not_both(a, b).partition(": ")[2])
        for a, b in _EXCLUSIVE.get(section, ())
        if raw.get(a) is not None and raw.get(b) is not None
    ]


def load_spec(source: Path | str | Mapping[str, Any]) -> TrainingSpec:
    """Load and validate a training spec, reporting every problem at once.

    Args:
        source: a YAML file path (``Path`` or a string ending in .yaml/.yml), YAML text, or a mapping.

    Returns:
        The validated ``TrainingSpec`` with defaults filled in.

    Raises:
        InvalidInput: one ``FieldViolation`` per problem, each naming the dotted field and the fix.
    """
    raw = _read_source(source)
    if not isinstance(raw, Mapping):
        raise InvalidInput.field_error("spec", "must be a mapping of sections (model:, data:, method:, ...)")
    good, partial, problems = _validate_sections(raw)
    problems.extend(v for v in cross_field_violations({**partial, **good}) if v not in problems)
    if problems:
        raise InvalidInput.of(problems, what="training spec")
    return TrainingSpec.model_validate(good)
