"""Evaluation metrics, each computed the way its reference implementation computes it.

Pure Python (no torch): the engine produces generations and log-likelihoods, these functions
turn them into numbers.

* ``bleu``: corpus BLEU from sacrebleu (``sacrebleu.corpus_bleu``, default 13a tokenizer), 0-100.
* ``rouge``: mean ROUGE-1/2/L F-measure from Google's rouge-score (Porter stemming on), 0-1;
  with several references an example takes its best reference (``RougeScorer.score_multi``).
* ``exact_match`` / ``token_f1``: the official SQuAD v1.1 evaluation script (answer normalization,
  max over ground truths, mean over examples), 0-1.
* ``classification``: accuracy and macro F1 over the union of seen labels (as scikit-learn's
  ``f1_score(average="macro")``: a label with no predicted and no true positives scores 0).
* ``multiple_choice``: acc and acc_norm from per-option log-likelihoods (lm-evaluation-harness
  ``multiple_choice`` task: argmax of the sum, and of the sum divided by the option's length).
* ``win_rate``: share of non-tie judgements won, with a Wilson score 95% interval.
* ``refusal_rate``: share of generations that open with a refusal phrase (a heuristic).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tuneforge.common.errors import InvalidInput

Z_95 = 1.959963984540054
"""The two-sided 95% normal quantile used by the Wilson interval."""


@dataclass(frozen=True)
class Score:
    """One metric value over ``count`` examples, with an optional 95% interval."""

    name: str
    value: float
    count: int
    ci_low: float | None = None
    ci_high: float | None = None


def _check_same_length(what: str, a: Sequence[object], b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise InvalidInput.field_error(
            what, f"{len(a)} predictions but {len(b)} references: give one reference entry per prediction"
        )


def _as_reference_lists(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    return [[r] if isinstance(r, str) else list(r) for r in references]


# --------------------------------------------------------------------------- generation metrics


def bleu(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> Score:
    """Corpus BLEU (sacrebleu defaults) of predictions against one or more references each.

    Args:
        predictions: one generation per example.
        references: per example, a reference string or a list of references. Every example must
            have the same number of references (sacrebleu's reference streams).

    Returns:
        ``Score("bleu", 0..100, count)``.

    Raises:
        InvalidInput: lengths differ or examples have different numbers of references.
    """
    import sacrebleu

    _check_same_length("references", predictions, references)
    refs = _as_reference_lists(references)
    counts = {len(r) for r in refs}
    if len(counts) > 1:
        raise InvalidInput.field_error(
            "references", f"examples have {sorted(counts)} references: give each the same number"
        )
    streams = [list(stream) for stream in zip(*refs, strict=True)] if refs else [[]]
    result = sacrebleu.corpus_bleu(list(predictions), streams)
    return Score("bleu", float(result.score), len(predictions))


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], *, use_stemmer: bool = True
) -> list[Score]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measure (rouge-score), best reference per example.

    Args:
        predictions: one generation per example.
        references: per example, a reference string or a list of references.
        use_stemmer: Porter-stem tokens (rouge-score's common setting).

    Returns:
        Three ``Score`` values named ``rouge1``, ``rouge2``, ``rougeL`` in 0..1.
    """
    from rouge_score import rouge_scorer

    _check_same_length("references", predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, refs in zip(predictions, _as_reference_lists(references), strict=True):
        scores = scorer.score_multi(refs, pred)
        for t in ROUGE_TYPES:
            totals[t] += scores[t].fmeasure
    n = len(predictions)
    return [Score(t, totals[t] / n if n else 0.0, n) for t in ROUGE_TYPES]


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalization: lower case, drop punctuation, articles and extra whitespace."""
    text = text.lower()
    exclude = set(string.punctuation)
    text = "".join(ch for ch in text if ch not in exclude)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1_one(prediction: str, truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(truth).split()
    common = Counter(pred_tokens) & Counter(truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> Score:
    """Mean SQuAD exact match (max over each example's ground truths), 0..1."""
    _check_same_length("references", predictions, references)
    hits = [
        max(float(normalize_answer(p) == normalize_answer(t)) for t in refs)
        for p, refs in zip(predictions, _as_reference_lists(references), strict=True)
    ]
    return Score("exact_match", sum(hits) / len(hits) if hits else 0.0, len(hits))


def token_f1(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> Score:
    """Mean SQuAD token F1 (max over each example's ground truths), 0..1."""
    _check_same_length("references", predictions, references)
    f1s = [
        max(_f1_one(p, t) for t in refs)
        for p, refs in zip(predictions, _as_reference_lists(references), strict=True)
    ]
    return Score("token_f1", sum(f1s) / len(f1s) if f1s else 0.0, len(f1s))


# --------------------------------------------------------------------------- label metrics


def classification(predictions: Sequence[str], labels: Sequence[str], *, strip: bool = True) -> list[Score]:
    """Accuracy and macro F1 of predicted labels.

    Args:
        predictions: predicted label per example (a generation, compared after ``strip``).
        labels: true label per example.
        strip: strip surrounding whitespace before comparing.

    Returns:
        ``accuracy`` and ``macro_f1`` (over the union of true and predicted labels, as
        scikit-learn's ``f1_score(average="macro", zero_division=0)``).
    """
    _check_same_length("labels", predictions, labels)
    preds = [p.strip() if strip else p for p in predictions]
    truth = [t.strip() if strip else t for t in labels]
    n = len(truth)
    accuracy = sum(p == t for p, t in zip(preds, truth, strict=True)) / n if n else 0.0
    f1s = []
    for label in sorted(set(truth) | set(preds)):
        tp = sum(p == label and t == label for p, t in zip(preds, truth, strict=True))
        fp = sum(p == label and t != label for p, t in zip(preds, truth, strict=True))
        fn = sum(p != label and t == label for p, t in zip(preds, truth, strict=True))
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else 0.0)
    macro = sum(f1s) / len(f1s) if f1s else 0.0
    return [Score("accuracy", accuracy, n), Score("macro_f1", macro, n)]


def multiple_choice(
    loglikelihoods: Sequence[Sequence[float]], choices: Sequence[Sequence[str]], gold: Sequence[int]
) -> list[Score]:
    """lm-evaluation-harness multiple-choice accuracy from option log-likelihoods.

    Args:
        loglikelihoods: per example, the summed log-likelihood of each option given the context.
        choices: per example, the option strings (their character length normalizes ``acc_norm``,
            as the harness does: ``len(choice)``, equal to the byte length for ASCII).
        gold: per example, the index of the correct option.

    Returns:
        ``acc`` (argmax of log-likelihood) and ``acc_norm`` (argmax of log-likelihood / length).
    """
    _check_same_length("gold", loglikelihoods, gold)
    acc = acc_norm = 0
    for i, (lls, opts, g) in enumerate(zip(loglikelihoods, choices, gold, strict=True)):
        if len(lls) != len(opts) or not 0 <= g < len(opts):
            raise InvalidInput.field_error(
                f"rows[{i}].gold", f"index {g} is not one of the {len(opts)} options: use 0..{len(opts) - 1}"
            )
        acc += int(_argmax(lls) == g)
        acc_norm += int(_argmax([ll / max(len(o), 1) for ll, o in zip(lls, opts, strict=True)]) == g)
    n = len(gold)
    return [Score("acc", acc / n if n else 0.0, n), Score("acc_norm", acc_norm / n if n else 0.0, n)]


def _argmax(values: Sequence[float]) -> int:
    # numpy.argmax semantics (first maximum wins), as the harness uses.
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


# --------------------------------------------------------------------------- rates


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``(0, 1)`` when there are no trials)."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class WinRate:
    """Head-to-head outcome of model vs baseline judgements."""

    wins: int
    losses: int
    ties: int
    rate: float
    ci_low: float
    ci_high: float
    tie_rate: float

    @property
    def total(self) -> int:
        """All judgements, ties included."""
        return self.wins + self.losses + self.ties


def win_rate(wins: int, losses: int, ties: int) -> WinRate:
    """Share of non-tie judgements won, with a Wilson 95% interval; ties reported apart.

    Returns ``rate`` 0.5 with the interval (0, 1) when every judgement is a tie (or none exists).
    """
    decided = wins + losses
    total = decided + ties
    rate = wins / decided if decided else 0.5
    low, high = wilson_interval(wins, decided)
    return WinRate(wins, losses, ties, rate, low, high, ties / total if total else 0.0)


REFUSAL_PATTERNS = (
    r"i('m| am) sorry",
    r"i (cannot|can't|can not|won't|will not|am unable to|'m unable to|am not able to)",
    r"i('m| am) (not able|unable) to",
    r"as an ai( language model)?",
    r"i (must|have to) (decline|refuse)",
    r"(sorry|unfortunately),? (but )?i (cannot|can't)",
    r"it('s| is) not appropriate",
    r"i do not feel comfortable",
)
_REFUSAL_RE = re.compile("|".join(f"(?:{p})" for p in REFUSAL_PATTERNS), re.IGNORECASE)
REFUSAL_WINDOW_CHARS = 200
"""Refusals open an answer: only the first characters are searched, so an answer that quotes
"I cannot" deep inside is not counted."""


def is_refusal(text: str) -> bool:
    """Whether a generation reads as a refusal (phrase heuristic over its opening)."""
    return bool(_REFUSAL_RE.search(text.replace("\u2019", "'")[:REFUSAL_WINDOW_CHARS]))


def refusal_rate(generations: Sequence[str]) -> Score:
    """Share of generations that are refusals, with a Wilson 95% interval."""
    n = len(generations)
    k = sum(is_refusal(g) for g in generations)
    low, high = wilson_interval(k, n)
    return Score("refusal_rate", k / n if n else 0.0, n, low, high)
