"""Detectors for personal data and secrets in text, with redaction.

Kinds (``PiiKind``): e-mail addresses, phone numbers, IPv4/IPv6 addresses, credit-card numbers
(13-19 digits, Luhn-checked, so order numbers and ISBNs are not flagged), and secrets in the
shapes secret scanners (gitleaks, detect-secrets) know: cloud credentials (AWS access key ids and
secret access keys, GCP API keys, OAuth client secrets and service-account private keys, Azure
storage account keys, AD client secrets and SAS signatures), provider tokens (GitHub, GitLab,
Slack tokens and webhooks, Stripe, OpenAI/Anthropic, Hugging Face, npm, SendGrid, Twilio),
bearer tokens, JWTs, private-key blocks (PEM, OpenSSH, PGP; also cut off), credentials in URLs,
and high-entropy values assigned to a key-like name (``api_key=...``, ``"secret": "..."``).
Every pattern has bounded quantifiers: the work is linear in the text.

Pure regex + arithmetic: no model, no download. Shared by the datasets service (curation step)
and anything else that must scrub text before storing or logging it.
"""

from __future__ import annotations

import bisect
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
_B64 = r"A-Za-z0-9/+="
_SECRET_PATTERNS = (
    re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|A3T[A-Z0-9])[0-9A-Z]{16}\b"),  # AWS access key id
    # AWS secret access key: 40 base64 characters near an AWS word (alone it is any base64 run).
    re.compile(rf"(?i:aws|amazon)[\w \t\"'.:=-]{{0,40}}?(?<![{_B64}])(?P<value>[{_B64}]{{40}})(?![{_B64}])"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),  # GCP / Google API key
    re.compile(r"\bGOCSPX-[0-9A-Za-z_-]{28}\b"),  # Google OAuth client secret
    re.compile(rf"(?i:AccountKey|SharedAccessKey)\s{{0,3}}=\s{{0,3}}(?P<value>[{_B64}]{{40,100}})"),  # Azure storage / bus
    re.compile(r"\b[0-9A-Za-z_~.]{3}\dQ~[0-9A-Za-z_~.-]{31,34}"),  # Azure AD client secret
    re.compile(r"(?i:[?&]sig=)(?P<value>[0-9A-Za-z%/+=]{40,120})"),  # Azure SAS signature
    re.compile(r"\b(?:ghp|gho|ghu|ghs)_[A-Za-z0-9]{36}\b|\bghr_[A-Za-z0-9]{36,76}\b"),  # GitHub tokens
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b"),
    re.compile(r"\bglpat-[A-Za-z0-9_-]{20,64}\b"),  # GitLab
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,200}\b|\bxapp-\d-[A-Za-z0-9-]{10,200}\b"),  # Slack tokens
    re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,120}"),  # Slack webhook
    re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{10,99}\b|\bwhsec_[0-9A-Za-z]{24,64}\b"),  # Stripe
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,200}\b"),  # OpenAI / Anthropic secret keys
    re.compile(r"\bhf_[A-Za-z0-9]{30,40}\b"),  # Hugging Face
    re.compile(r"\bnpm_[A-Za-z0-9]{36}\b"),  # npm
    re.compile(r"\bSG\.[\w-]{16,32}\.[\w-]{16,64}"),  # SendGrid
    re.compile(r"\bSK[0-9a-fA-F]{32}\b"),  # Twilio API key
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,4096}\.eyJ[A-Za-z0-9_-]{8,8192}\.[A-Za-z0-9_-]{8,4096}"),  # JWT
    re.compile(r"(?i)\bbearer\s{1,8}[A-Za-z0-9._~+/=-]{16,4096}"),
    # Private keys (PEM, OpenSSH, PGP), whole or cut off after the header; inside JSON (a GCP
    # service-account file) the newlines are the two characters \n, covered by [\s\S].
    # The body is matched possessively (base64, armor headers, escaped newlines): linear even on
    # thousands of headers without an end line.
    re.compile(r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:[A-Za-z0-9+/=\s:.,]|\\[nr]){0,16384}+"
               r"(?:-----END [A-Z ]{0,40}PRIVATE KEY(?: BLOCK)?-----)?"),
    # Credentials in URLs: scheme://user:password@host
    re.compile(r"(?i)\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@]{1,128}:(?P<value>[^\s@/]{3,256})@"),
)
_KEY_VALUE = re.compile(
    r"""(?ix)
    (?:api[_-]?key|secret|token|password|passwd|pwd|access[_-]?key|private[_-]?key|client[_-]?secret|credential)
    [\w-]{0,20}["']?\s{0,8}[:=]\s{0,8}["']?(?P<value>[A-Za-z0-9+/_.=~-]{16,512})
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
        for m in regex.finditer(text):  # only the secret itself where the pattern marks it
            yield m.span("value") if "value" in regex.groupindex else m.span()
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
    # Taken spans, sorted and non-overlapping: an overlap check is a binary search, so a row with
    # many matches costs n log n, not n^2.
    starts: list[int] = []
    taken: list[PiiMatch] = []
    for kind, detector in _DETECTORS.items():
        if kind not in wanted:
            continue
        for start, end in detector(text):
            i = bisect.bisect_right(starts, start)
            if (i > 0 and taken[i - 1].end > start) or (i < len(taken) and taken[i].start < end):
                continue
            starts.insert(i, start)
            taken.insert(i, PiiMatch(kind, start, end, text[start:end]))
    return taken


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
