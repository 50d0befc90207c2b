"""Per-row curation steps: normalize, exact and near dedup, length, quality, PII, toxicity, language.

Each step processes a batch of canonical records and returns the records it keeps; removed
records go to ``Step.removed`` callbacks with a reason, so every run has an exact account.
Steps marked ``columnar`` also process whole Arrow tables (``process_table``, built on
``columnar``) with exactly the row path's results; the pipeline keeps batches as tables for
as long as the steps allow.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from tuneforge.common.text.pii import parse_kinds, redact
from tuneforge.common.text.toxicity import ToxicityScorer
from tuneforge.datasets.domain import config as cfg
from tuneforge.datasets.domain.columnar import normalize_table, separated_content_keys
from tuneforge.datasets.domain.neardup import NearDupIndex
from tuneforge.datasets.domain.records import answer_text, content_key, map_texts, texts_of, to_table
from tuneforge.datasets.domain.tokens import token_counter

Record = dict[str, Any]
Reject = Callable[[Record, str, str], None]
"""Called with (record, field, reason) for each removed record."""

_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_TRAILING = re.compile(r"[ \t]+\n")
_MAX_CLUSTERS_REPORTED = 20


class Step:
    """Base of every step: a name, counters, and batch processing."""

    name = ""
    columnar = False
    """Whether ``process_table`` works on Arrow tables without converting them to dicts."""

    def __init__(self, reject: Reject) -> None:
        self.reject = reject
        self.rows_modified = 0
        self.details: dict[str, Any] = {}

    def process(self, batch: list[Record]) -> list[Record]:
        """Return the kept (possibly modified) records of a batch."""
        raise NotImplementedError

    def process_table(self, table: pa.Table) -> pa.Table:
        """Return the kept (possibly modified) records of a table (the row path by default)."""
        return to_table(self.process(table.to_pylist()))

    def finish(self) -> Iterator[list[Record]]:
        """Yield records held back until the end (barrier steps); none by default."""
        return iter(())

    def report(self) -> dict[str, Any]:
        """Step-specific figures for the run's lineage."""
        return self.details


def _flag(record: Record, flag: str) -> Record:
    provenance = dict(record["provenance"])
    provenance["flags"] = [*(provenance.get("flags") or []), flag]
    return {**record, "provenance": provenance}


class NormalizeStep(Step):
    """Unicode NFC, whitespace runs collapsed (newlines kept), ends stripped."""

    name = "normalize"
    columnar = True

    def __init__(self, reject: Reject, config: cfg.Normalize) -> None:
        super().__init__(reject)
        self.collapse = config.collapse_whitespace
        self._changed = False

    def _normalize(self, text: str) -> str:
        original = text
        if not text.isascii():
            text = unicodedata.normalize("NFC", text)
            if self.collapse:
                text = _TRAILING.sub("\n", _SPACES.sub(" ", text))
        elif self.collapse and ("  " in text or "\t" in text or " \n" in text):
            text = _TRAILING.sub("\n", _SPACES.sub(" ", text))
        text = text.strip()
        if text != original:
            self._changed = True
        return text

    def process(self, batch: list[Record]) -> list[Record]:
        out = []
        for record in batch:
            self._changed = False
            out.append(map_texts(record, self._normalize))
            self.rows_modified += self._changed
        return out

    def process_table(self, table: pa.Table) -> pa.Table:
        out, modified = normalize_table(table, self.collapse)
        self.rows_modified += modified
        return out


def dedup_digest(key: str) -> int:
    """The 128-bit xxh3 exact dedup compares for a content key (``records.content_key``).

    The key is hashed with a leading separator when it is not empty, as the columnar path
    (``columnar.separated_content_keys``) builds it; equal keys give equal digests either way.
    """
    return xxhash.xxh3_128_intdigest(("\x1f" + key if key else "").encode())


class ExactDedupStep(Step):
    """Drops records whose content equals an earlier record's (128-bit xxh3 of the content)."""

    name = "exact_dedup"
    columnar = True

    def __init__(self, reject: Reject, config: cfg.ExactDedup) -> None:
        super().__init__(reject)
        self.ignore_case = config.ignore_case
        self.seen: dict[int, int] = {}

    def process(self, batch: list[Record]) -> list[Record]:
        out = []
        for record in batch:
            key = content_key(record)
            digest = dedup_digest(key.lower() if self.ignore_case else key)
            first = self.seen.get(digest)
            if first is not None:
                self.reject(record, "", f"exact duplicate of row {first}")
            else:
                self.seen[digest] = record["provenance"]["row"]
                out.append(record)
        self.details["duplicates"] = self.details.get("duplicates", 0) + len(batch) - len(out)
        return out

    def _digests(self, table: pa.Table) -> list[int]:
        keys = separated_content_keys(table)
        if self.ignore_case:  # Python's lower(), as the row path, not Arrow's utf8_lower
            return [xxhash.xxh3_128_intdigest(k.lower().encode()) for k in keys.to_pylist()]
        return list(map(xxhash.xxh3_128_intdigest, keys.cast(pa.binary()).to_pylist()))

    def process_table(self, table: pa.Table) -> pa.Table:
        """The row path's result with C-level loops: membership in ``seen`` over the batch, a
        dict built in reverse for the first position of each digest inside the batch, one
        ``dict.update``."""
        digests = self._digests(table)
        n = len(digests)
        provenance = table.column("provenance").combine_chunks()
        rows = provenance.field("row").to_numpy()
        old = np.fromiter(map(self.seen.__contains__, digests), dtype=bool, count=n)
        earliest = dict(zip(reversed(digests), range(n - 1, -1, -1), strict=True))  # the earliest position wins
        first_in_batch = np.fromiter(map(earliest.__getitem__, digests), dtype=np.int64, count=n)
        keep = ~old & (first_in_batch == np.arange(n))
        kept = np.flatnonzero(keep)
        self.seen.update(zip([digests[i] for i in kept], rows[kept].tolist(), strict=True))
        removed = np.flatnonzero(~keep)
        if len(removed):
            sources = provenance.field("source").take(pa.array(removed)).to_pylist()
            for i, source in zip(removed.tolist(), sources, strict=True):
                # After the update ``seen`` holds the earlier batch's row or this batch's first.
                first = self.seen[digests[i]]
                self.reject({"provenance": {"row": int(rows[i]), "source": source}}, "", f"exact duplicate of row {first}")
        self.details["duplicates"] = self.details.get("duplicates", 0) + len(removed)
        return table.filter(pa.array(keep)) if len(removed) else table


class NearDedupStep(Step):
    """Drops near duplicates (MinHash LSH), keeping the first of each cluster."""

    name = "near_dedup"

    def __init__(self, reject: Reject, config: cfg.NearDedup) -> None:
        super().__init__(reject)
        self.index = NearDupIndex(config.threshold, config.num_perm, config.ngram_size)
        self.next_key = 0
        self.rows: dict[int, int] = {}

    def process(self, batch: list[Record]) -> list[Record]:
        keys = list(range(self.next_key, self.next_key + len(batch)))
        self.next_key += len(batch)
        texts = [" ".join(texts_of(r)) for r in batch]
        matches = self.index.check_batch(keys, texts)
        out = []
        for key, record, match in zip(keys, batch, matches, strict=True):
            if match is None:
                self.rows[key] = record["provenance"]["row"]
                out.append(record)
            else:
                self.reject(record, "", f"near duplicate of row {self.rows[match]} (MinHash Jaccard >= {self.index.threshold})")
        return out

    def report(self) -> dict[str, Any]:
        clusters = sorted(self.index.clusters.items(), key=lambda kv: -len(kv[1]))
        return {
            "clusters": len(clusters),
            "duplicates": sum(len(v) for _, v in clusters),
            "largest_clusters": [
                {"kept_row": self.rows[k], "size": len(v) + 1} for k, v in clusters[:_MAX_CLUSTERS_REPORTED]
            ],
        }


class LengthFilterStep(Step):
    """Drops records outside character and token bounds (all texts of a record together)."""

    name = "length_filter"

    def __init__(self, reject: Reject, config: cfg.LengthFilter, models_dir: Path | None = None) -> None:
        super().__init__(reject)
        self.config = config
        needs_tokens = config.min_tokens or config.max_tokens
        self.counter = (token_counter(config.tokenizer, models_dir=models_dir, field="steps.length_filter.tokenizer")
                        if needs_tokens else None)

    def process(self, batch: list[Record]) -> list[Record]:
        c = self.config
        texts = ["\n".join(texts_of(r)) for r in batch]
        tokens = self.counter.count(texts) if self.counter else [0] * len(batch)
        out = []
        for record, text, n_tokens in zip(batch, texts, tokens, strict=True):
            chars = len(text)
            if c.min_chars and chars < c.min_chars:
                self.reject(record, "", f"{chars} characters, below min_chars={c.min_chars}")
            elif c.max_chars and chars > c.max_chars:
                self.reject(record, "", f"{chars} characters, above max_chars={c.max_chars}")
            elif c.min_tokens and n_tokens < c.min_tokens:
                self.reject(record, "", f"{n_tokens} tokens, below min_tokens={c.min_tokens}")
            elif c.max_tokens and n_tokens > c.max_tokens:
                self.reject(record, "", f"{n_tokens} tokens, above max_tokens={c.max_tokens}")
            else:
                out.append(record)
        return out


def repetition_ratio(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier n-gram of the same text."""
    words = text.lower().split()
    if len(words) < n + 1:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def symbol_ratio(text: str) -> float:
    """Share of characters that are neither alphanumeric nor whitespace."""
    if not text:
        return 0.0
    symbols = sum(1 for ch in text if not (ch.isalnum() or ch.isspace()))
    return symbols / len(text)


class QualityFilterStep(Step):
    """Drops repetitive, symbol-heavy records and too-short answers."""

    name = "quality_filter"

    def __init__(self, reject: Reject, config: cfg.QualityFilter) -> None:
        super().__init__(reject)
        self.config = config
        self.reasons: Counter[str] = Counter()

    def process(self, batch: list[Record]) -> list[Record]:
        c = self.config
        out = []
        for record in batch:
            text = "\n".join(texts_of(record))
            answer_words = len(answer_text(record).split())
            if (rep := repetition_ratio(text)) > c.max_repetition:
                reason, why = "repetition", f"repetition ratio {rep:.2f} above {c.max_repetition}"
            elif (sym := symbol_ratio(text)) > c.max_symbol_ratio:
                reason, why = "symbols", f"symbol ratio {sym:.2f} above {c.max_symbol_ratio}"
            elif answer_words < c.min_answer_words and record.get("kind") != "prompt":  # prompts have no answer
                reason, why = "short_answer", f"answer has {answer_words} words, below {c.min_answer_words}"
            else:
                out.append(record)
                continue
            self.reasons[reason] += 1
            self.reject(record, "", why)
        self.details = dict(self.reasons)
        return out


class PiiStep(Step):
    """Redacts PII with typed placeholders, or drops rows that contain any."""

    name = "pii"

    def __init__(self, reject: Reject, config: cfg.Pii) -> None:
        super().__init__(reject)
        self.kinds = parse_kinds(config.kinds)
        self.drop = config.action is cfg.PiiAction.DROP
        self.found: Counter[str] = Counter()

    def process(self, batch: list[Record]) -> list[Record]:
        out = []
        for record in batch:
            counts: Counter[str] = Counter()

            def scrub(text: str, counts: Counter[str] = counts) -> str:
                clean, found = redact(text, self.kinds)
                counts.update(found)
                return clean

            cleaned = map_texts(record, scrub)
            self.found.update(counts)
            if not counts:
                out.append(record)
            elif self.drop:
                self.reject(record, "", "contains PII: " + ", ".join(sorted(counts)))
            else:
                self.rows_modified += 1
                out.append(_flag(cleaned, "pii_redacted"))
        self.details = {"found": dict(self.found)}
        return out


class ToxicityStep(Step):
    """Scores every record with the lexicon scorer; flags or drops at the threshold."""

    name = "toxicity"

    def __init__(self, reject: Reject, config: cfg.Toxicity) -> None:
        super().__init__(reject)
        self.config = config
        self.scorer = ToxicityScorer()
        self.terms: Counter[str] = Counter()
        self.flagged = 0

    def process(self, batch: list[Record]) -> list[Record]:
        out = []
        for record in batch:
            result = self.scorer.score("\n".join(texts_of(record)))
            if result.score < self.config.threshold:
                out.append(record)
                continue
            self.flagged += 1
            self.terms.update(result.flagged_terms)
            if self.config.action is cfg.ScreenAction.DROP:
                self.reject(record, "", f"toxicity {result.score:.2f} >= {self.config.threshold}: {', '.join(result.flagged_terms[:5])}")
            else:
                self.rows_modified += 1
                out.append(_flag(record, f"toxicity:{result.score:.2f}"))
        self.details = {"flagged": self.flagged, "top_terms": dict(self.terms.most_common(10))}
        return out


@functools.lru_cache(maxsize=1)
def language_identifier() -> Any:
    """py3langid's identifier with normalized probabilities (its model ships in the wheel)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


class LanguageStep(Step):
    """Identifies the language (py3langid, model shipped in the package) and keeps chosen ones."""

    name = "language"

    def __init__(self, reject: Reject, config: cfg.Language) -> None:
        super().__init__(reject)
        self.identifier = language_identifier()
        self.keep = {code.lower() for code in config.keep}
        self.min_confidence = config.min_confidence
        self.languages: Counter[str] = Counter()

    def process(self, batch: list[Record]) -> list[Record]:
        out = []
        for record in batch:
            text = " ".join(texts_of(record))[:2000]
            lang, confidence = self.identifier.classify(text)
            self.languages[lang] += 1
            if lang in self.keep and confidence >= self.min_confidence:
                out.append(record)
            elif lang not in self.keep:
                self.reject(record, "", f"language '{lang}' ({confidence:.2f}) not in {sorted(self.keep)}")
            else:
                self.reject(record, "", f"language '{lang}' detected with confidence {confidence:.2f} < {self.min_confidence}")
        self.details = {"languages": dict(self.languages.most_common(20))}
        return out
