"""pydantic errors to field violations with dotted paths and fixes (internal)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from tuneforge.common.errors import FieldViolation

# ----------------------------------------------------------------------------- error reporting

_HINTS = {
    "hyperparameters.learning_rate": "typical LoRA values are 1e-4..3e-4, full fine-tuning 1e-5..5e-5",
    "hyperparameters.micro_batch_size": "start with 1-8 and raise gradient_accumulation_steps instead",
    "method.lora.r": "typical values are 8..64",
    "resources.zero_stage": "0 (DDP), 1, 2 or 3",
    "data.max_seq_length": "typical values are 512..8192",
    "tenant": "lowercase letters, digits and '-', e.g. team-a",
    "output.checkpoint_uri": "e.g. file:///data/ckpt or s3://bucket/prefix",
    "output.run_name": "letters, digits, '.', '_' and '-', at most 128",
}


def _dotted(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(cls: Any, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the last element of ``loc`` (to suggest its field names)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if field is None:
            return None
        cls = _inner_model(field.annotation)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _describe(err: Mapping[str, Any], cls: type[BaseModel] | None) -> str:
    kind, ctx = err["type"], err.get("ctx", {})
    if kind == "extra_forbidden":
        parent = _model_at(cls, err["loc"][:-1]) if cls else None
        known = list(parent.model_fields) if parent else []
        return _unknown_key_fix(str(err["loc"][-1]), known)
    if kind == "missing":
        return "is required"
    if kind == "enum":
        return f"must be one of {ctx.get('expected', '')} (got {err.get('input')!r})"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        value = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {value} (got {err.get('input')!r})"
    if kind == "string_pattern_mismatch":
        return f"has an invalid format (got {err.get('input')!r})"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def violations_from_validation_error(
    exc: ValidationError, *, prefix: str = "", model: type[BaseModel] | None = None
) -> list[FieldViolation]:
    """Turn a pydantic ``ValidationError`` into field violations with dotted paths and fixes."""
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))  # drop union tags
        text = _describe(err, model)
        head, sep, rest = text.partition(": ")
        holder = _model_at(model, loc) if model else None
        if sep and holder is not None and head in holder.model_fields:
            loc, text = (*loc, head), rest
        field = _dotted(prefix, loc) or "spec"
        hint = _HINTS.get(field)
        out.append(
            FieldViolation(field, f"{text}; {hint}" if hint and err["type"] != "extra_forbidden" else text)
        )
    return out


def _unknown_key_fix(key: str, known: list[str]) -> str:
    if key == "trust_remote_code":
        return "is not supported: tuneforge never runs code shipped with a model; remove it"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(known))}"
    return f"unknown key; {hint}"
