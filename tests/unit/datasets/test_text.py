"""Toxicity scorer and PII detectors (shared in tuneforge.common.text)."""

from __future__ import annotations

import pytest

from tuneforge.common.text.pii import PiiKind, find_pii, luhn_valid, parse_kinds, redact
from tuneforge.common.text.toxicity import ToxicityScore, ToxicityScorer


@pytest.mark.parametrize(("text", "score", "terms"), [
    ("have a nice day", 0.0, []),
    ("", 0.0, []),
    ("what the shit, you asshole", 0.84, ["shit", "asshole"]),
    ("All women are bad at math", 0.6, ["bias:women"]),
    ("Scunthorpe is a town", 0.0, []),
])
def test_toxicity_scores(text: str, score: float, terms: list[str]) -> None:
    result = ToxicityScorer().score(text)
    assert isinstance(result, ToxicityScore)
    assert result.score == pytest.approx(score, abs=1e-6)
    assert result.flagged_terms == terms
    assert 0.0 <= result.score <= 1.0


def test_extra_terms_extend_the_lexicon() -> None:
    assert ToxicityScorer(extra_terms=("frobnicate",)).score("do not frobnicate").flagged_terms == ["frobnicate"]


@pytest.mark.parametrize(("text", "kinds"), [
    ("write to john.doe@example.co.uk", ["email"]),
    ("call +1 415-555-0132 or (020) 7946 0958", ["phone", "phone"]),
    ("hosts 10.0.0.1 and 2001:db8::8a2e:370:7334", ["ip", "ip"]),
    ("card 4111 1111 1111 1111", ["credit_card"]),
    ("key AKIAIOSFODNN7EXAMPLE", ["secret"]),
    ("token ghp_" + "a1" * 18, ["secret"]),
    ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz123456", ["secret"]),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", ["secret"]),
    ('api_key = "Zx9Qw3Er7Ty1Ui5Op2As"', ["secret"]),
])
def test_pii_kinds_are_found(text: str, kinds: list[str]) -> None:
    assert [m.kind.value for m in find_pii(text)] == kinds


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112",  # fails Luhn
    "version 1.2.3.4.5 at 12:30:45",
    "order 2023-10-11 shipped",
    "password = aaaaaaaaaaaaaaaaaaaa",  # low entropy: not a secret
    "999.1.1.1 is not an address",
])
def test_pii_false_positives_are_avoided(text: str) -> None:
    assert find_pii(text) == []


def test_redact_replaces_with_placeholders_and_counts() -> None:
    text, counts = redact("mail a@b.io, card 4111111111111111", [PiiKind.EMAIL])
    assert text == "mail [EMAIL], card 4111111111111111"
    assert counts == {"email": 1}


def test_luhn_and_kind_parsing() -> None:
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert parse_kinds([]) == frozenset(PiiKind)
    with pytest.raises(ValueError, match="use one of"):
        parse_kinds(["passport"])
