"""Metrics equal their reference implementations on the same inputs."""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tuneforge.common.errors import InvalidInput
from tuneforge.evaluation.domain import metrics

PREDICTIONS = [
    "The cat sat on the mat.",
    "Paris is the capital of France",
    "a quick brown fox jumps over the lazy dog",
    "I like green apples and red pears.",
    "Nothing in common here",
]
REFERENCES = [
    "The cat is sitting on the mat.",
    "The capital of France is Paris.",
    "The quick brown fox jumped over a lazy dog!",
    "I like red apples and green pears",
    "Completely different words",
]


# The official SQuAD v1.1 evaluation script's functions, verbatim apart from formatting.
def _squad_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def _squad_f1_score(prediction, ground_truth):
    prediction_tokens = _squad_normalize_answer(prediction).split()
    ground_truth_tokens = _squad_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def _squad_exact_match_score(prediction, ground_truth):
    return _squad_normalize_answer(prediction) == _squad_normalize_answer(ground_truth)


def _squad_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, gt) for gt in ground_truths)


def test_bleu_equals_sacrebleu_corpus_bleu():
    expected = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score
    got = metrics.bleu(PREDICTIONS, REFERENCES)
    assert got.value == pytest.approx(expected, abs=1e-9)
    assert got.count == 5
    assert 0 < got.value < 100


def test_bleu_with_two_references_per_example_uses_reference_streams():
    second = ["a cat on a mat", "Paris", "fox", "apples and pears", "words"]
    refs = [[a, b] for a, b in zip(REFERENCES, second, strict=True)]
    expected = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES, second]).score
    assert metrics.bleu(PREDICTIONS, refs).value == pytest.approx(expected, abs=1e-9)


def test_bleu_rejects_ragged_reference_counts():
    with pytest.raises(InvalidInput, match="same number"):
        metrics.bleu(["a", "b"], [["x"], ["y", "z"]])


def test_rouge_equals_rouge_score_mean_fmeasure():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    per_example = [scorer.score(r, p) for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
    got = {s.name: s.value for s in metrics.rouge(PREDICTIONS, REFERENCES)}
    for t in ("rouge1", "rouge2", "rougeL"):
        expected = sum(s[t].fmeasure for s in per_example) / len(per_example)
        assert got[t] == pytest.approx(expected, abs=1e-12), t
    assert got["rouge1"] > got["rouge2"]


def test_rouge_multi_reference_takes_best():
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    refs = [["completely unrelated", REFERENCES[0]]]
    got = metrics.rouge(PREDICTIONS[:1], refs)[0]
    assert got.value == pytest.approx(scorer.score(REFERENCES[0], PREDICTIONS[0])["rouge1"].fmeasure)


@pytest.mark.parametrize(
    ("prediction", "truths"),
    [
        ("The Eiffel Tower!", ["eiffel tower"]),
        ("an apple a day", ["Apple day"]),
        ("1,000 people", ["1000 people", "a thousand people"]),
        ("  Paris,   France ", ["Paris"]),
        ("nothing", ["something else"]),
        ("the the the", ["the"]),
    ],
)
def test_exact_match_and_f1_equal_official_squad_script(prediction, truths):
    em = metrics.exact_match([prediction], [truths]).value
    f1 = metrics.token_f1([prediction], [truths]).value
    assert em == float(_squad_max_over_ground_truths(_squad_exact_match_score, prediction, truths))
    assert f1 == pytest.approx(_squad_max_over_ground_truths(_squad_f1_score, prediction, truths))


def test_squad_means_over_examples():
    em = metrics.exact_match(PREDICTIONS, REFERENCES)
    f1 = metrics.token_f1(PREDICTIONS, REFERENCES)
    expected_f1 = sum(_squad_f1_score(p, r) for p, r in zip(PREDICTIONS, REFERENCES, strict=True)) / 5
    assert f1.value == pytest.approx(expected_f1)
    assert em.value == 0.0
    assert metrics.normalize_answer("The  Cat, a Dog.") == _squad_normalize_answer("The  Cat, a Dog.")


CLASSIFICATION_CASES = [
    (["pos", "neg", "pos", "neu", "neg", "pos"], ["pos", "neg", "neg", "neu", "pos", "pos"]),
    (["a", "b", "c", "d"], ["a", "a", "a", "a"]),  # labels predicted but never true
    (["x", "x", "y"], ["x", "y", "z"]),  # a true label never predicted
]


@pytest.mark.parametrize(("preds", "truth"), CLASSIFICATION_CASES)
def test_classification_equals_sklearn(preds, truth):
    sk = pytest.importorskip("sklearn.metrics")
    got = {s.name: s.value for s in metrics.classification(preds, truth)}
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(truth, preds))
    assert got["macro_f1"] == pytest.approx(sk.f1_score(truth, preds, average="macro", zero_division=0))


def test_classification_hand_computed_table():
    # preds a a a b b, truth a a b b c:
    # a: tp=2 fp=1 fn=0 -> 0.8; b: tp=1 fp=1 fn=1 -> 0.5; c: tp=0 fp=0 fn=1 -> 0; macro = 1.3 / 3.
    got = {s.name: s.value for s in metrics.classification(list("aaabb"), list("aabbc"))}
    assert got["accuracy"] == pytest.approx(3 / 5)
    assert got["macro_f1"] == pytest.approx(1.3 / 3)


def test_multiple_choice_acc_and_acc_norm_follow_the_harness():
    import numpy as np

    lls = [[-4.0, -6.0, -9.0], [-10.0, -12.0], [-3.0, -3.0]]
    choices = [[" a", " longer option", " mid one"], [" x", " a much longer one"], [" p", " q"]]
    gold = [1, 1, 0]
    got = {s.name: s.value for s in metrics.multiple_choice(lls, choices, gold)}
    # The harness: acc = argmax(lls) == gold; acc_norm = argmax(lls / len(choice)) == gold.
    exp_acc = np.mean([np.argmax(ll) == g for ll, g in zip(lls, gold, strict=True)])
    exp_norm = np.mean(
        [
            np.argmax(np.array(ll) / np.array([float(len(c)) for c in cs])) == g
            for ll, cs, g in zip(lls, choices, gold, strict=True)
        ]
    )
    assert got["acc"] == pytest.approx(exp_acc)
    assert got["acc_norm"] == pytest.approx(exp_norm)
    assert got["acc"] != got["acc_norm"]  # the case set separates them


def test_multiple_choice_rejects_gold_out_of_range():
    with pytest.raises(InvalidInput, match=r"rows\[0\]\.gold"):
        metrics.multiple_choice([[-1.0, -2.0]], [["a", "b"]], [2])


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (7, 12), (10, 10), (45, 100), (1, 1)])
def test_wilson_interval_equals_scipy(k, n):
    stats = pytest.importorskip("scipy.stats")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = metrics.wilson_interval(k, n)
    assert low == pytest.approx(ci.low, abs=1e-9)
    assert high == pytest.approx(ci.high, abs=1e-9)


def test_win_rate_excludes_ties_and_reports_them():
    wr = metrics.win_rate(wins=8, losses=2, ties=5)
    assert wr.rate == pytest.approx(0.8)
    assert wr.tie_rate == pytest.approx(5 / 15)
    assert wr.ci_low < 0.8 < wr.ci_high
    assert wr.total == 15
    assert metrics.win_rate(0, 0, 3).rate == 0.5


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I cannot assist with this request.", True),
        ("As an AI language model, I do not have opinions.", True),
        ("I\u2019m unable to do that.", True),
        ("Paris is the capital of France.", False),
        ("Sure! Here is the recipe." + " step" * 60 + " I cannot stress enough how good it is.", False),
    ],
)
def test_refusal_heuristic(text, refused):
    assert metrics.is_refusal(text) is refused


def test_refusal_rate_with_interval():
    s = metrics.refusal_rate(["I'm sorry, no.", "Yes.", "Sure.", "I won't do that."])
    assert s.value == 0.5
    assert s.ci_low is not None and s.ci_low < 0.5 < s.ci_high
