"""Typed curation configuration: one frozen dataclass per step, validated before a run starts.

``check_pipeline`` reports every problem at once (field path and fix). ``to_dict`` gives the
resolved configuration that is stored as the version's lineage.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from tuneforge.common.errors import FieldViolation, InvalidInput
from tuneforge.common.public_text import echo
from tuneforge.common.storage.keys import check_key
from tuneforge.common.text.pii import parse_kinds


class PiiAction(enum.StrEnum):
    """Redact matches or drop the row."""

    REDACT = "redact"
    DROP = "drop"


class ScreenAction(enum.StrEnum):
    """Flag the row (provenance) or drop it."""

    FLAG = "flag"
    DROP = "drop"


@dataclass(frozen=True)
class Normalize:
    """Unicode NFC; optionally collapse runs of spaces/tabs (newlines kept)."""

    collapse_whitespace: bool = True


@dataclass(frozen=True)
class ExactDedup:
    """Drop rows whose normalized content equals an earlier row's."""

    ignore_case: bool = False


@dataclass(frozen=True)
class NearDedup:
    """MinHash LSH near-duplicate removal."""

    threshold: float = 0.8
    ngram_size: int = 5
    num_perm: int = 128


@dataclass(frozen=True)
class LengthFilter:
    """Bounds on characters and tokens (0 = no bound)."""

    min_chars: int = 0
    max_chars: int = 0
    min_tokens: int = 0
    max_tokens: int = 0
    tokenizer: str = ""


@dataclass(frozen=True)
class QualityFilter:
    """Repetition, symbol ratio and answer length heuristics."""

    max_repetition: float = 0.3
    max_symbol_ratio: float = 0.3
    min_answer_words: int = 1


@dataclass(frozen=True)
class Pii:
    """PII redaction or removal."""

    action: PiiAction = PiiAction.REDACT
    kinds: tuple[str, ...] = ()


@dataclass(frozen=True)
class Toxicity:
    """Toxicity/bias screening."""

    threshold: float = 0.5
    action: ScreenAction = ScreenAction.FLAG


@dataclass(frozen=True)
class Language:
    """Language identification and filtering."""

    keep: tuple[str, ...] = ("en",)
    min_confidence: float = 0.5


@dataclass(frozen=True)
class Balance:
    """Category balancing: cap per category and/or resample to a target mix."""

    cap_per_category: int = 0
    target_mix: tuple[tuple[str, float], ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class Decontaminate:
    """Drop rows sharing a word n-gram with evaluation versions."""

    eval_version_ids: tuple[str, ...] = ()
    ngram_size: int = 13


@dataclass(frozen=True)
class Augment:
    """Template variants of instructions and synonym replacement."""

    instruction_variants: int = 0
    synonym_probability: float = 0.0
    seed: int = 0


LANGUAGE_NAMES: dict[str, str] = {
    "ar": "Arabic", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "es": "Spanish", "fi": "Finnish", "fr": "French", "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch", "no": "Norwegian", "pl": "Polish",
    "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sv": "Swedish", "tr": "Turkish",
    "uk": "Ukrainian", "vi": "Vietnamese", "zh": "Chinese",
}
"""ISO 639-1 codes accepted for back-translation, with the names used in the prompts."""


@dataclass(frozen=True)
class GenerativeAugment:
    """Paraphrases and back-translations of the instruction by a local generative model."""

    model: str = ""
    paraphrases: int = 0
    back_translation_languages: tuple[str, ...] = ()
    fraction: float = 1.0
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    batch_size: int = 8
    source_language: str = "en"


StepConfig = (Normalize | ExactDedup | NearDedup | LengthFilter | QualityFilter | Pii | Toxicity | Language | Balance
              | Decontaminate | Augment | GenerativeAugment)

STEP_NAMES: dict[type, str] = {
    Normalize: "normalize",
    ExactDedup: "exact_dedup",
    NearDedup: "near_dedup",
    LengthFilter: "length_filter",
    QualityFilter: "quality_filter",
    Pii: "pii",
    Toxicity: "toxicity",
    Language: "language",
    Balance: "balance",
    Decontaminate: "decontaminate",
    Augment: "augment",
    GenerativeAugment: "generative_augment",
}


@dataclass(frozen=True)
class SplitConfig:
    """Deterministic train/validation/test split."""

    validation_ratio: float = 0.0
    test_ratio: float = 0.0
    seed: int = 0
    stratify: bool = True


@dataclass(frozen=True)
class PipelineConfig:
    """A whole curation run."""

    steps: tuple[StepConfig, ...] = ()
    split: SplitConfig | None = None
    max_removal_fraction: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as JSON-ready data (stored as lineage)."""
        return {
            "steps": [{STEP_NAMES[type(s)]: _plain(dataclasses.asdict(s))} for s in self.steps],
            "split": _plain(dataclasses.asdict(self.split)) if self.split else None,
            "max_removal_fraction": self.max_removal_fraction,
        }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return {str(k): v for k, v in value}
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _ratio(value: float, path: str, out: list[FieldViolation], *, open_low: bool = False) -> None:
    if not (0.0 < value <= 1.0 if open_low else 0.0 <= value <= 1.0):
        bound = "(0, 1]" if open_low else "[0, 1]"
        out.append(FieldViolation(path, f"is {value}: give a number in {bound}"))


def _seed(value: int, path: str, out: list[FieldViolation]) -> None:
    if value < 0:
        out.append(FieldViolation(path, f"is {value}: seeds are 0 or more"))


def _check_step(step: StepConfig, path: str, out: list[FieldViolation]) -> None:
    if (seed := getattr(step, "seed", None)) is not None:
        _seed(seed, f"{path}.seed", out)
    if isinstance(step, NearDedup):
        _ratio(step.threshold, f"{path}.threshold", out, open_low=True)
        if not 1 <= step.ngram_size <= 64:
            out.append(FieldViolation(f"{path}.ngram_size", f"is {step.ngram_size}: use 1-64 (5 is typical)"))
        if not 16 <= step.num_perm <= 1024:
            out.append(FieldViolation(f"{path}.num_perm", f"is {step.num_perm}: use 16-1024 (128 is typical)"))
    elif isinstance(step, LengthFilter):
        for name in ("min_chars", "max_chars", "min_tokens", "max_tokens"):
            if getattr(step, name) < 0:
                out.append(FieldViolation(f"{path}.{name}", "is negative: use 0 for no bound"))
        if step.max_chars and step.min_chars > step.max_chars:
            out.append(FieldViolation(f"{path}.min_chars", "is above max_chars: swap them"))
        if step.max_tokens and step.min_tokens > step.max_tokens:
            out.append(FieldViolation(f"{path}.min_tokens", "is above max_tokens: swap them"))
    elif isinstance(step, QualityFilter):
        _ratio(step.max_repetition, f"{path}.max_repetition", out)
        _ratio(step.max_symbol_ratio, f"{path}.max_symbol_ratio", out)
        if not 0 <= step.min_answer_words <= 10_000:
            out.append(FieldViolation(f"{path}.min_answer_words", f"is {step.min_answer_words}: use 0-10000"))
    elif isinstance(step, Pii):
        try:
            parse_kinds(step.kinds)
        except ValueError as exc:
            out.append(FieldViolation(f"{path}.kinds", str(exc)))
    elif isinstance(step, Toxicity | Language):
        _ratio(step.threshold if isinstance(step, Toxicity) else step.min_confidence, f"{path}.threshold", out)
        if isinstance(step, Language) and not step.keep:
            out.append(FieldViolation(f"{path}.keep", "is empty: list ISO 639-1 codes to keep, e.g. ['en']"))
    elif isinstance(step, Balance):
        _check_balance(step, path, out)
    elif isinstance(step, Decontaminate):
        if not step.eval_version_ids:
            out.append(FieldViolation(f"{path}.eval_version_ids", "is empty: name the evaluation versions"))
        if len(step.eval_version_ids) > 100:
            out.append(FieldViolation(f"{path}.eval_version_ids", "names more than 100 versions"))
        if not 1 <= step.ngram_size <= 64:
            out.append(FieldViolation(f"{path}.ngram_size", f"is {step.ngram_size}: use 1-64 (13 is typical)"))
    elif isinstance(step, Augment):
        _ratio(step.synonym_probability, f"{path}.synonym_probability", out)
        if not 0 <= step.instruction_variants <= 10:
            out.append(FieldViolation(f"{path}.instruction_variants", "use 0-10 variants per row"))
    elif isinstance(step, GenerativeAugment):
        _check_generative(step, path, out)


def _check_balance(step: Balance, path: str, out: list[FieldViolation]) -> None:
    if step.cap_per_category < 0:
        out.append(FieldViolation(f"{path}.cap_per_category", "is negative: use 0 for no cap"))
    if step.cap_per_category > 1_000_000_000:
        out.append(FieldViolation(f"{path}.cap_per_category", "is above 10^9: use 0 for no cap"))
    if any(w < 0 for _, w in step.target_mix):
        out.append(FieldViolation(f"{path}.target_mix", "has a negative share: use shares >= 0"))
    if step.target_mix and sum(w for _, w in step.target_mix) <= 0:
        out.append(FieldViolation(f"{path}.target_mix", "shares sum to 0: give positive shares"))
    if not step.cap_per_category and not step.target_mix:
        out.append(FieldViolation(path, "sets neither cap_per_category nor target_mix: set one"))


def _check_generative(step: GenerativeAugment, path: str, out: list[FieldViolation]) -> None:
    if not step.model:
        out.append(FieldViolation(f"{path}.model", "is empty: name a model folder of the service's models folder"))
    elif "/" in step.model or ".." in step.model or step.model.startswith("."):
        out.append(FieldViolation(f"{path}.model", f"{echo(step.model)} is not a folder name: give a name such as "
                                  "'smollm2-135m-instruct' (no '/', no '..', no leading '.')"))
    else:
        try:
            check_key(step.model, field=f"{path}.model")
        except InvalidInput as exc:
            out.extend(exc.violations)
    if not 0 <= step.paraphrases <= 10:
        out.append(FieldViolation(f"{path}.paraphrases", f"is {step.paraphrases}: use 0-10 paraphrases per row"))
    codes = step.back_translation_languages
    for j, code in enumerate(codes):
        if code not in LANGUAGE_NAMES:
            out.append(FieldViolation(f"{path}.back_translation_languages[{j}]",
                                      f"{echo(code)} is not supported: use one of {', '.join(sorted(LANGUAGE_NAMES))}"))
        elif code == step.source_language or code in codes[:j]:
            out.append(FieldViolation(f"{path}.back_translation_languages[{j}]",
                                      f"{echo(code)} is the source language or repeated: list each pivot once"))
    if step.source_language not in LANGUAGE_NAMES:
        out.append(FieldViolation(f"{path}.source_language", f"{echo(step.source_language)} is not supported: use one "
                                  f"of {', '.join(sorted(LANGUAGE_NAMES))}"))
    if step.paraphrases == 0 and not codes:
        out.append(FieldViolation(path, "sets neither paraphrases nor back_translation_languages: set one"))
    _ratio(step.fraction, f"{path}.fraction", out, open_low=True)
    if not 1 <= step.max_new_tokens <= 1024:
        out.append(FieldViolation(f"{path}.max_new_tokens", f"is {step.max_new_tokens}: use 1-1024 (128 is typical)"))
    if not 0.0 <= step.temperature <= 2.0:
        out.append(FieldViolation(f"{path}.temperature", f"is {step.temperature}: use 0 (greedy) to 2"))
    if not 1 <= step.batch_size <= 256:
        out.append(FieldViolation(f"{path}.batch_size", f"is {step.batch_size}: use 1-256 prompts per call"))


def check_pipeline(config: PipelineConfig, prefix: str = "") -> None:
    """Validate a pipeline configuration.

    Args:
        config: the configuration.
        prefix: put before every field name (``"curation."`` for a curation inside an upload).

    Raises:
        InvalidInput: every problem, each naming ``<prefix>steps[i].<field>`` and the fix.
    """
    out: list[FieldViolation] = []
    for i, step in enumerate(config.steps):
        _check_step(step, f"{prefix}steps[{i}].{STEP_NAMES[type(step)]}", out)
    _ratio(config.max_removal_fraction, f"{prefix}max_removal_fraction", out, open_low=True)
    if config.split:
        _ratio(config.split.validation_ratio, f"{prefix}split.validation_ratio", out)
        _ratio(config.split.test_ratio, f"{prefix}split.test_ratio", out)
        _seed(config.split.seed, f"{prefix}split.seed", out)
        if config.split.validation_ratio + config.split.test_ratio >= 1.0:
            out.append(FieldViolation(f"{prefix}split", "validation_ratio + test_ratio must be below 1: leave rows for train"))
    if out:
        raise InvalidInput.of(out, "curation pipeline")


__all__ = [*(c.__name__ for c in STEP_NAMES), "LANGUAGE_NAMES", "PipelineConfig", "SplitConfig", "check_pipeline",
           "field"]
