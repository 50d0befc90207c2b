"""Whole-dataset curation steps: category balancing, decontamination and augmentation.

Synonyms: no PyPI package ships a synonym lexicon usable offline (nltk's WordNet and ``wn``
download their data at run time), so ``synonyms.py`` in this package holds a small, documented
table of common English words and is the lexicon used here.
"""

from __future__ import annotations

import random
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import xxhash

from tuneforge.datasets.domain import config as cfg
from tuneforge.datasets.domain.records import texts_of
from tuneforge.datasets.domain.shards import ShardWriter, iter_batches
from tuneforge.datasets.domain.steps import Record, Reject, Step
from tuneforge.datasets.domain.synonyms import SYNONYMS

UNCATEGORIZED = "(none)"
_WORD = re.compile(r"[A-Za-z]+")
_TOKEN = re.compile(r"\w+")
INSTRUCTION_TEMPLATES = (
    "{instruction}",
    "Please answer the following. {instruction}",
    "Task: {instruction}",
    "{instruction}\n\nRespond helpfully.",
    "Here is a request: {instruction}",
    "Instruction: {instruction}",
    "I need help with this: {instruction}",
    "Could you help? {instruction}",
    "Question: {instruction}",
    "Read carefully and reply. {instruction}",
    "{instruction} (answer below)",
)


class BalanceStep(Step):
    """Caps rows per category and/or resamples to a target mix (a barrier: sees all rows first).

    With a target mix, the largest total that respects every share without repeating rows is
    chosen (``min(count_c / share_c)``), then each category is sampled down by seed.
    """

    name = "balance"

    def __init__(self, reject: Reject, config: cfg.Balance, workdir: Path) -> None:
        super().__init__(reject)
        self.config = config
        self._dir = Path(tempfile.mkdtemp(prefix="balance-", dir=workdir))
        self._writer = ShardWriter(self._dir)
        self.counts: Counter[str] = Counter()

    def process(self, batch: list[Record]) -> list[Record]:
        for record in batch:
            self.counts[record.get("category") or UNCATEGORIZED] += 1
        self._writer.add_many(batch)
        return []

    def quotas(self) -> dict[str, int]:
        """Rows to keep per category."""
        quotas = dict(self.counts)
        if self.config.cap_per_category:
            quotas = {c: min(n, self.config.cap_per_category) for c, n in quotas.items()}
        mix = {c: w for c, w in self.config.target_mix if w > 0}
        if mix:
            total_share = sum(mix.values())
            shares = {c: w / total_share for c, w in mix.items()}
            feasible = min((quotas.get(c, 0) / s for c, s in shares.items()), default=0)
            quotas = {c: int(feasible * shares[c]) if c in shares else 0 for c in quotas}
        return quotas

    def finish(self) -> Iterator[list[Record]]:
        shards = self._writer.close()
        quotas = self.quotas()
        rng = random.Random(self.config.seed)
        keep: dict[str, set[int]] = {c: set(rng.sample(range(n), quotas.get(c, 0))) for c, n in self.counts.items()}
        seen: Counter[str] = Counter()
        self.details = {"before": dict(self.counts), "after": {c: len(k) for c, k in keep.items()}}
        for batch in iter_batches(shards.files):
            out = []
            for record in batch:
                category = record.get("category") or UNCATEGORIZED
                index = seen[category]
                seen[category] += 1
                if index in keep[category]:
                    out.append(record)
                else:
                    self.reject(record, "category", f"category '{category}' over its quota of {quotas.get(category, 0)}")
            yield out


def word_ngrams(text: str, n: int) -> Iterator[int]:
    """Hashes of the lower-cased word n-grams of a text (a shorter text is one n-gram)."""
    words = _TOKEN.findall(text.lower())
    if not words:
        return
    if len(words) < n:
        yield xxhash.xxh3_64_intdigest(" ".join(words).encode())
        return
    for i in range(len(words) - n + 1):
        yield xxhash.xxh3_64_intdigest(" ".join(words[i : i + n]).encode())


class DecontaminateStep(Step):
    """Drops training rows that share any word n-gram with the evaluation rows."""

    name = "decontaminate"

    def __init__(self, reject: Reject, config: cfg.Decontaminate, eval_records: Callable[[], Iterable[Record]]) -> None:
        super().__init__(reject)
        self.n = config.ngram_size
        self.index: set[int] = set()
        eval_rows = 0
        for record in eval_records():
            eval_rows += 1
            self.index.update(word_ngrams(" ".join(texts_of(record)), self.n))
        self.details = {"eval_rows": eval_rows, "eval_ngrams": len(self.index), "contaminated": 0}

    def process(self, batch: list[Record]) -> list[Record]:
        out = []
        for record in batch:
            if any(h in self.index for h in word_ngrams(" ".join(texts_of(record)), self.n)):
                self.details["contaminated"] += 1
                self.reject(record, "", f"shares a {self.n}-word n-gram with the evaluation data")
            else:
                out.append(record)
        return out


def _replace_synonyms(text: str, probability: float, rng: random.Random) -> tuple[str, int]:
    replaced = 0

    def swap(match: re.Match[str]) -> str:
        nonlocal replaced
        word = match.group(0)
        options = SYNONYMS.get(word.lower())
        if not options or rng.random() >= probability:
            return word
        replaced += 1
        choice = rng.choice(options)
        return choice.capitalize() if word[0].isupper() else choice

    return _WORD.sub(swap, text), replaced


class AugmentStep(Step):
    """Adds template variants of instructions and synonym-replaced copies, marked augmented."""

    name = "augment"

    def __init__(self, reject: Reject, config: cfg.Augment) -> None:
        super().__init__(reject)
        self.config = config
        self.rng = random.Random(config.seed)
        self.added: Counter[str] = Counter()

    def _variant(self, record: Record, prompt: str) -> Record:
        messages = [dict(m) for m in record["messages"]]
        first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[first_user]["content"] = prompt
        provenance = {**record["provenance"], "augmented": True}
        return {**record, "messages": messages, "provenance": provenance}

    def _augment(self, record: Record) -> list[Record]:
        out: list[Record] = []
        users = [m for m in record.get("messages") or () if m["role"] == "user"]
        if not users:
            return out
        instruction = users[0]["content"]
        if self.config.instruction_variants:
            templates = self.rng.sample(INSTRUCTION_TEMPLATES[1:], min(self.config.instruction_variants, len(INSTRUCTION_TEMPLATES) - 1))
            out += [self._variant(record, t.format(instruction=instruction)) for t in templates]
            self.added["template"] += len(templates)
        if self.config.synonym_probability:
            text, replaced = _replace_synonyms(instruction, self.config.synonym_probability, self.rng)
            if replaced:
                out.append(self._variant(record, text))
                self.added["synonym"] += 1
        return out

    def process(self, batch: list[Record]) -> list[Record]:
        out = []
        for record in batch:
            out.append(record)
            if not record["provenance"].get("augmented"):
                out.extend(self._augment(record))
        self.details = {"added": dict(self.added)}
        return out


