"""Detectors for personal data and secrets in text, with redaction.

Kinds (``PiiKind``): e-mail addresses, phone numbers, IPv4/IPv6 addresses, credit-card numbers
(13-19 digits, Luhn-checked, so order numbers and ISBNs are not flagged), and secrets: AWS access
key ids, GitHub tokens, bearer tokens, JWTs, private-key blocks and high-entropy values assigned
to a key-like name (``api_key=...``, ``"secret": "..."``).

Pure regex + arithmetic: no model, no download. Shared by the datasets service (curation step)
and anything else that must scrub text before storing or logging it.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass


class PiiKind(enum.StrEnum):
    """The kinds of personal data and secrets the detectors find."""

    EMAIL = "email"
    PHONE = "phone"
    IP = "ip"
    CREDIT_CARD = "credit_card"
    SECRET = "secret"


@dataclass(frozen=True)
class PiiMatch:
    """One finding: its kind and character span ``[start, end)`` in the text."""

    kind: PiiKind
    start: int
    end: int
    value: str

    @property
    def placeholder(self) -> str:
        """What redaction puts in its place, e.g. ``[EMAIL]``."""
        return f"[{self.kind.value.upper()}]"


_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}\b")
_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[\s.-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]\d{3,4}"
    r"(?![\w])(?![\s.-]\d)"
)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_SECRET_PATTERNS = (
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}\b"),  # GitHub tokens
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"),  # Slack tokens
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),  # OpenAI-style secret keys
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b"),  # JWT
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{16,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
)
_KEY_VALUE = re.compile(
    r"""(?ix)
    (?:api[_-]?key|secret|token|password|passwd|access[_-]?key|private[_-]?key|client[_-]?secret)
    [\w-]{0,20}["']?\s*[:=]\s*["']?(?P<value>[A-Za-z0-9+/_.=-]{16,})
    """
)
_MIN_SECRET_ENTROPY = 3.0  # bits per character; English words sit near 2.5-3, random keys above 4


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum (credit-card numbers do)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def shannon_entropy(value: str) -> float:
    """Shannon entropy of a string in bits per character."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def _emails(text: str) -> Iterable[tuple[int, int]]:
    return ((m.start(), m.end()) for m in _EMAIL.finditer(text))


def _phones(text: str) -> Iterable[tuple[int, int]]:
    for m in _PHONE.finditer(text):
        digits = sum(ch.isdigit() for ch in m.group(0))
        if 7 <= digits <= 15:
            yield m.start(), m.end()


def _ips(text: str) -> Iterable[tuple[int, int]]:
    for regex in (_IPV4, _IPV6):
        for m in regex.finditer(text):
            try:
                ipaddress.ip_address(m.group(0))
            except ValueError:
                continue
            yield m.start(), m.end()


def _cards(text: str) -> Iterable[tuple[int, int]]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            yield m.start(), m.end()


def _secrets(text: str) -> Iterable[tuple[int, int]]:
    for regex in _SECRET_PATTERNS:
        for m in regex.finditer(text):
            yield m.start(), m.end()
    for m in _KEY_VALUE.finditer(text):
        if shannon_entropy(m.group("value")) >= _MIN_SECRET_ENTROPY:
            yield m.start("value"), m.end("value")


_DETECTORS = {
    PiiKind.SECRET: _secrets,  # first: a key may contain digit runs that look like phones/cards
    PiiKind.EMAIL: _emails,
    PiiKind.CREDIT_CARD: _cards,
    PiiKind.IP: _ips,
    PiiKind.PHONE: _phones,
}


def parse_kinds(names: Iterable[str]) -> frozenset[PiiKind]:
    """Turn kind names into ``PiiKind`` values; no names means every kind.

    Raises:
        ValueError: an unknown name (the message lists the accepted ones).
    """
    names = list(names)
    if not names:
        return frozenset(PiiKind)
    out = set()
    for name in names:
        try:
            out.add(PiiKind(name.strip().lower()))
        except ValueError:
            accepted = ", ".join(k.value for k in PiiKind)
            raise ValueError(f"unknown PII kind {name!r}: use one of {accepted}") from None
    return frozenset(out)


def find_pii(text: str, kinds: Iterable[PiiKind] | None = None) -> list[PiiMatch]:
    """Find non-overlapping PII matches in ``text``, in order of position.

    Args:
        text: the text to scan.
        kinds: the kinds to look for; None means all.

    Returns:
        Matches sorted by start; where two overlap, the one found by the earlier detector
        (secrets, e-mail, card, IP, phone) wins.
    """
    wanted = frozenset(PiiKind) if kinds is None else frozenset(kinds)
    taken: list[PiiMatch] = []
    for kind, detector in _DETECTORS.items():
        if kind not in wanted:
            continue
        for start, end in detector(text):
            if all(end <= t.start or start >= t.end for t in taken):
                taken.append(PiiMatch(kind, start, end, text[start:end]))
    return sorted(taken, key=lambda m: m.start)


def redact(text: str, kinds: Iterable[PiiKind] | None = None) -> tuple[str, Counter[str]]:
    """Replace every PII match with its placeholder (``[EMAIL]``, ``[SECRET]``, ...).

    Returns:
        The redacted text and the number of matches per kind name.
    """
    matches = find_pii(text, kinds)
    if not matches:
        return text, Counter()
    parts: list[str] = []
    pos = 0
    for m in matches:
        parts.append(text[pos : m.start])
        parts.append(m.placeholder)
        pos = m.end
    parts.append(text[pos:])
    return "".join(parts), Counter(m.kind.value for m in matches)
