"""Generative augmentation: paraphrases and back-translations of instructions by a local model.

The step rewrites a row's instruction (its first user turn, as ``AugmentStep`` does) with a
``TextGenerator``: ``paraphrases`` rewordings, and one round trip through each pivot language of
``back_translation_languages`` (source -> pivot -> source). Every generation is judged before it
is kept (``judge``): empty, unchanged, an absurd length or an echo of the prompt is discarded and
counted by reason. Accepted variants follow their source row, marked ``provenance.augmented`` and
flagged ``aug:<method>:<model>``; already augmented rows are never augmented again.

Determinism: rows are chosen by a hash of (seed, source, row), not by their position in a batch,
and each model call gets a seed derived from the step's seed and the call's index; greedy decoding
(temperature 0) does not depend on seeds at all.

The generator comes from a ``GeneratorProvider`` (``adapters.generator.LocalTextGenerators``
loads models from the service's models folder); this module imports neither torch nor grpc.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import xxhash

from tuneforge.common.errors import FailedPrecondition, FieldViolation
from tuneforge.common.public_text import echo
from tuneforge.datasets.domain import config as cfg
from tuneforge.datasets.domain.steps import Record, Reject, Step, language_identifier

PARAPHRASE_PROMPTS = (
    "Rewrite the following text with different words but the same meaning. "
    "Do not answer it or carry it out: reply with the rewritten text only.\n\n{text}",
    "Paraphrase the following request so that it asks for exactly the same thing. "
    "Do not carry it out: reply with the paraphrased request only.\n\n{text}",
    "Say the following in other words, the way another person might ask it. "
    "Do not answer it: reply with the new wording only.\n\n{text}",
)
"""Paraphrase prompts (variant ``k`` uses prompt ``k % 3``: greedy decoding then still differs)."""

PARAPHRASE_SYSTEM = "You reword requests. You never answer a request or carry it out."
PARAPHRASE_EXAMPLES = (
    ("List three fruits that are red.", "Name three red fruits."),
    ("Explain how a bicycle works.", "Describe the way a bicycle functions."),
    ("Write a letter to a friend about your holiday.", "Compose a note to a friend telling them about your vacation."),
    ("Why do cats purr?", "What makes cats purr?"),
)
"""Worked examples shown before the request (few-shot): without them small instruction models
(SmolLM2-135M-Instruct) carry the request out instead of rewording it. Variant ``k`` shows them
rotated by ``k``."""

TRANSLATE_PROMPT = "Translate the following text into {language}. Reply with the translation only.\n\n{text}"

MIN_LENGTH_RATIO = 0.3
MAX_LENGTH_RATIO = 3.0
LANGUAGE_CONFIDENCE = 0.85
PIVOT_MIN_LENGTH_RATIO = 0.1  # pivots in scripts such as Chinese are far shorter in characters
_SHORT = 20  # texts shorter than this count as this long in the ratio: short instructions vary most
_LABEL = re.compile(
    r"^(?:here is|here's|sure[,!.]?)?[^\n:]{0,40}\b(?:instruction|paraphrase|rephrased|rewritten|rewording|"
    r"wording|translation|text|request|version)\b[^\n:]{0,20}:\s*",
    re.IGNORECASE,
)
_QUOTES = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u00ab", "\u00bb"))
_NON_WORD = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings of one generator call."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    seed: int = 0
    batch_size: int = 8


Chat = list[dict[str, str]]
"""Messages (``role``, ``content``) ending with a user message."""
Prompt = str | Chat
"""A user message, or a whole chat (system message and worked examples before the request)."""


class TextGenerator(Protocol):
    """A generative model: one completion per prompt."""

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[str]:
        """Complete each prompt (the model's chat template is applied when it has one)."""
        ...


class GeneratorProvider(Protocol):
    """The models a service can generate with, by name (``adapters.generator.LocalTextGenerators``)."""

    models_dir: Path  # the service's models: also where tokenizers are resolved, by model name

    def names(self) -> list[str]:
        """The names of the usable models, sorted."""
        ...

    def get(self, name: str) -> TextGenerator:
        """A generator for model ``name`` (loaded on first use); ``FailedPrecondition`` when unknown."""
        ...


def check_models(config: cfg.PipelineConfig, generators: GeneratorProvider | None, prefix: str = "") -> None:
    """Fail before a run starts when a ``generative_augment`` step names a model the service lacks.

    Raises:
        FailedPrecondition: naming ``<prefix>steps[i].generative_augment.model``, the models
            available and how to add one.
    """
    for i, step in enumerate(config.steps):
        if not isinstance(step, cfg.GenerativeAugment):
            continue
        available = generators.names() if generators is not None else []
        if step.model in available:
            continue
        field = f"{prefix}steps[{i}].generative_augment.model"
        have = f"available: {', '.join(available)}" if available else "this service has no models"
        fix = ("add one by putting its folder (config.json, *.safetensors, tokenizer) under the service's "
               "TUNEFORGE_MODELS_DIR, or name an available one")
        raise FailedPrecondition(f"{field}: no model {echo(step.model)} ({have}): {fix}",
                                 violations=[FieldViolation(field, f"no model {echo(step.model)}: {have}")])


def paraphrase_prompt(text: str, variant: int) -> Chat:
    """The chat asking for paraphrase number ``variant`` of ``text``: the system message, the
    worked examples (rotated by ``variant``) in the same wording, then the request."""
    template = PARAPHRASE_PROMPTS[variant % len(PARAPHRASE_PROMPTS)]
    shift = variant % len(PARAPHRASE_EXAMPLES)
    chat: Chat = [{"role": "system", "content": PARAPHRASE_SYSTEM}]
    for request, reworded in PARAPHRASE_EXAMPLES[shift:] + PARAPHRASE_EXAMPLES[:shift]:
        chat += [{"role": "user", "content": template.format(text=request)}, {"role": "assistant", "content": reworded}]
    return [*chat, {"role": "user", "content": template.format(text=text)}]


def translate_prompt(text: str, language: str) -> str:
    """The prompt asking to translate ``text`` into the language with ISO 639-1 code ``language``."""
    return TRANSLATE_PROMPT.format(language=cfg.LANGUAGE_NAMES[language], text=text)


def clean_generation(text: str, source: str = "") -> str:
    """A generation without its preamble, its chatter after the first paragraph, or wrapping quotes.

    Small chat models often answer "Here's a rewritten version:" then the text on the next lines,
    or a "Paraphrase: ..." label, and go on after the text with explanations. So: blanks are
    stripped; a first line ending with ":" and followed by more text is dropped; a leading label
    is removed; when ``source`` is one paragraph, only the first paragraph is kept; quotes that
    wrap the whole text are removed.
    """
    text = text.strip()
    head, sep, rest = text.partition("\n")
    if sep and head.rstrip().endswith(":") and rest.strip() and not source.partition("\n")[0].rstrip().endswith(":"):
        text = rest.strip()
    text = _LABEL.sub("", text, count=1).strip()
    if "\n\n" not in source.strip():
        text = text.split("\n\n", 1)[0].strip()
    for left, right in _QUOTES:
        if len(text) > 1 and text.startswith(left) and text.endswith(right):
            text = text[1:-1].strip()
    return text


def _lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


def _norm(text: str) -> str:
    return _NON_WORD.sub(" ", text.casefold()).strip()


def _template_markers(template: str) -> tuple[str, ...]:
    # The fixed sentences of a prompt template: a generation containing one repeats the prompt.
    fixed = template.split("{text}")[0].replace("{language}", "")
    return tuple(m for m in (_norm(s) for s in fixed.split(".")) if len(m) > 8)


_MARKERS = tuple(m for t in (*PARAPHRASE_PROMPTS, TRANSLATE_PROMPT) for m in _template_markers(t))
_EXAMPLES = tuple((_norm(request), _norm(reworded)) for request, reworded in PARAPHRASE_EXAMPLES)


def _echoes(norm: str, source_norm: str) -> bool:
    """Whether a generation repeats a prompt template sentence or a worked example the source does not hold."""
    if any(m in norm and m not in source_norm for m in _MARKERS):
        return True
    return any((request in norm or reworded in norm) and request not in source_norm and reworded not in source_norm
               for request, reworded in _EXAMPLES)


def judge(source: str, generated: str, *, min_ratio: float = MIN_LENGTH_RATIO, language: str = "") -> str:
    """Why a cleaned generation must be discarded, or ``""`` when it is a usable variant of ``source``.

    Reasons, in the order checked: ``empty``, ``unchanged`` (equal after case/punctuation
    normalization), ``echo`` (it repeats a sentence of a prompt template or a worked example
    that the source does not contain), ``length_ratio`` (length outside [``min_ratio``, 3] times the source's, texts
    shorter than 20 characters counted as 20), ``line_count`` (more than 2n - 1 lines for a source
    of n lines: small models answer "Give three tips" with three lines) and, when ``language`` (ISO 639-1) is given,
    ``wrong_language`` (identified as another language with confidence >= 0.85: short texts
    are rarely identified that surely, so they are not judged by language).
    """
    norm, source_norm = _norm(generated), _norm(source)
    if not norm:
        return "empty"
    if norm == source_norm:
        return "unchanged"
    if _echoes(norm, source_norm):
        return "echo"
    ratio = max(len(generated), _SHORT) / max(len(source), _SHORT)
    if not min_ratio <= ratio <= MAX_LENGTH_RATIO:
        return "length_ratio"
    if _lines(generated) > 2 * _lines(source) - 1:  # one line -> a list: an answer, not a rewording
        return "line_count"
    if language:
        found, confidence = language_identifier().classify(generated[:2000])
        if found != language and confidence >= LANGUAGE_CONFIDENCE:
            return "wrong_language"
    return ""


def first_instruction(record: Record) -> str | None:
    """The content of the record's first user message, or None when it has none (or it is blank)."""
    users = [m for m in record.get("messages") or () if m["role"] == "user"]
    return users[0]["content"] if users and users[0]["content"].strip() else None


def with_instruction(record: Record, text: str, flag: str) -> Record:
    """A copy of ``record`` whose first user message is ``text``, marked augmented and flagged."""
    messages = [dict(m) for m in record["messages"]]
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[first_user]["content"] = text
    provenance = dict(record["provenance"])
    provenance["augmented"] = True
    provenance["flags"] = [*(provenance.get("flags") or []), flag]
    return {**record, "messages": messages, "provenance": provenance}


class GenerativeAugmentStep(Step):
    """Adds model-written paraphrases and back-translations of instructions (see the module docstring)."""

    name = "generative_augment"

    def __init__(self, reject: Reject, config: cfg.GenerativeAugment, generators: GeneratorProvider | None) -> None:
        super().__init__(reject)
        if generators is None:
            raise FailedPrecondition("generative_augment: this service has no generative models configured")
        self.config = config
        self._generators = generators
        self._generator: TextGenerator | None = None
        self._calls = 0
        self.selected = 0
        self.added: Counter[str] = Counter()
        self.discarded: dict[str, Counter[str]] = {}

    def _selected(self, record: Record) -> bool:
        if self.config.fraction >= 1.0:
            return True
        prov = record["provenance"]
        key = f"{self.config.seed}\x1f{prov.get('source')}\x1f{prov.get('row')}".encode()
        return xxhash.xxh3_64_intdigest(key) / 2.0**64 < self.config.fraction

    def _generate(self, prompts: list[Prompt], sources: list[str]) -> list[str]:
        """Cleaned completions of ``prompts``; ``sources[i]`` is the text that prompt ``i`` rewrites."""
        if not prompts:
            return []
        if self._generator is None:
            self._generator = self._generators.get(self.config.model)
        seed = xxhash.xxh3_64_intdigest(f"{self.config.seed}\x1f{self._calls}".encode()) % (1 << 31)
        self._calls += 1
        c = self.config
        params = GenerationParams(c.max_new_tokens, c.temperature, seed, c.batch_size)
        return [clean_generation(t, s) for t, s in zip(self._generator.generate(prompts, params), sources, strict=True)]

    def _keep(self, method: str, source: str, text: str, taken: list[str]) -> bool:
        reason = judge(source, text, language=self.config.source_language) or (
            "duplicate" if _norm(text) in taken else "")
        if reason:
            self.discarded.setdefault(method, Counter())[reason] += 1
            return False
        taken.append(_norm(text))
        self.added[method] += 1
        return True

    def _variants(self, sources: list[str]) -> list[list[tuple[str, str]]]:
        """Accepted (method, text) pairs per source text, paraphrases first, then each pivot."""
        c = self.config
        out: list[list[tuple[str, str]]] = [[] for _ in sources]
        taken: list[list[str]] = [[] for _ in sources]
        texts = self._generate([paraphrase_prompt(s, k) for s in sources for k in range(c.paraphrases)],
                               [s for s in sources for _ in range(c.paraphrases)])
        for n, text in enumerate(texts):
            i = n // c.paraphrases
            if self._keep("paraphrase", sources[i], text, taken[i]):
                out[i].append(("paraphrase", text))
        pairs = [(i, lang) for i in range(len(sources)) for lang in c.back_translation_languages]
        pivots = self._generate([translate_prompt(sources[i], lang) for i, lang in pairs], [sources[i] for i, _ in pairs])
        kept = [(i, lang, p) for (i, lang), p in zip(pairs, pivots, strict=True)
                if self._keep_pivot(lang, sources[i], p)]
        back = self._generate([translate_prompt(p, c.source_language) for _, _, p in kept], [sources[i] for i, _, _ in kept])
        for (i, lang, _), text in zip(kept, back, strict=True):
            if self._keep(f"back_translation:{lang}", sources[i], text, taken[i]):
                out[i].append((f"back_translation:{lang}", text))
        return out

    def _keep_pivot(self, language: str, source: str, pivot: str) -> bool:
        reason = judge(source, pivot, min_ratio=PIVOT_MIN_LENGTH_RATIO, language=language)
        if reason:
            # an untranslated pivot ("unchanged") would only give the source back
            self.discarded.setdefault(f"back_translation:{language}", Counter())[f"pivot_{reason}"] += 1
        return not reason

    def process(self, batch: list[Record]) -> list[Record]:
        chosen = [i for i, r in enumerate(batch) if not r["provenance"].get("augmented")
                  and first_instruction(r) is not None and self._selected(r)]
        self.selected += len(chosen)
        variants = dict(zip(chosen, self._variants([first_instruction(batch[i]) or "" for i in chosen]), strict=True))
        out: list[Record] = []
        for i, record in enumerate(batch):
            out.append(record)
            for method, text in variants.get(i, ()):
                out.append(with_instruction(record, text, f"aug:{method}:{self.config.model}"))
        return out

    def report(self) -> dict[str, Any]:
        """Added and discarded generations by method (and reason), the rows chosen and the model."""
        return {"model": self.config.model, "rows_selected": self.selected, "added": dict(self.added),
                "discarded": {m: dict(c) for m, c in self.discarded.items()}}
