"""Bearer-token authentication and the caller's tenant identity.

Tokens map to tenants (``tenant:token`` pairs from settings or a mounted secret file). Tokens are
compared in constant time and only their sha256 is kept in memory. The identity of the current call
is available to domain code through ``current_identity()`` (a context variable set by the auth
interceptor for the duration of the handler, including streamed responses).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from tuneforge.common.errors import FieldViolation, InvalidInput, Unauthenticated

_TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Identity:
    """Who is calling: the tenant namespaces all data; subject names the token (for audit logs)."""

    tenant: str
    subject: str
    # The caller's own bearer token, kept so a service can call its peers on the caller's behalf
    # (same tenant, same rights). Never shown: excluded from repr and comparisons.
    token: str = field(default="", repr=False, compare=False)


_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("tuneforge_identity", default=None)


def current_identity() -> Identity:
    """The identity of the call being served.

    Raises:
        Unauthenticated: outside an authenticated call.
    """
    ident = _current.get()
    if ident is None:
        raise Unauthenticated("no authenticated identity for this call: send 'authorization: Bearer <token>'")
    return ident


@contextmanager
def bound_identity(identity: Identity) -> Iterator[None]:
    """Bind ``identity`` for the duration of a block (interceptors, background jobs, tests)."""
    token = _current.set(identity)
    try:
        yield
    finally:
        _current.reset(token)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenAuthenticator:
    """Maps bearer tokens to identities."""

    def __init__(self, pairs: dict[str, str]) -> None:
        """Args: pairs: token -> tenant."""
        # The subject names a token stably (its digest prefix), whatever other tokens come and go.
        self._by_digest = {_digest(tok): Identity(tenant, f"{tenant}/{_digest(tok).hex()[:8]}")
                           for tok, tenant in pairs.items()}

    @staticmethod
    def tokens_in(spec: str) -> list[str]:
        """Every token in a ``tenant:token`` spec, well-formed or not (to register for redaction)."""
        entries = [e.strip() for e in re.split(r"[,\n]", spec) if e.strip() and not e.strip().startswith("#")]
        return [e.partition(":")[2].strip() for e in entries if ":" in e]

    @classmethod
    def parse(cls, spec: str) -> TokenAuthenticator:
        """Parse ``tenant:token`` pairs separated by commas or newlines.

        Raises:
            InvalidInput: naming each malformed entry by position (never echoing the token).
        """
        pairs: dict[str, str] = {}
        violations = []
        entries = [e.strip() for e in re.split(r"[,\n]", spec) if e.strip() and not e.strip().startswith("#")]
        for i, entry in enumerate(entries):
            tenant, sep, token = entry.partition(":")
            if not sep or not _TENANT_RE.match(tenant):
                violations.append(FieldViolation(f"TUNEFORGE_AUTH_TOKENS[{i}]", "expected tenant:token with a "
                                                 "tenant of lowercase letters, digits and '-'"))
            elif len(token) < 16:
                violations.append(FieldViolation(f"TUNEFORGE_AUTH_TOKENS[{i}]",
                                                 "token too short: use at least 16 random characters"))
            else:
                pairs[token] = tenant
        if violations:
            raise InvalidInput.of(violations, what="settings")
        return cls(pairs)

    def authenticate(self, authorization: str | None) -> Identity:
        """Check an ``authorization`` header value.

        Raises:
            Unauthenticated: missing, malformed or unknown token.
        """
        if not authorization:
            raise Unauthenticated("missing credentials: send metadata 'authorization: Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("malformed authorization metadata: expected 'Bearer <token>'")
        digest = _digest(token.strip())
        found = None
        for known, ident in self._by_digest.items():  # constant-time comparison of every entry
            if hmac.compare_digest(known, digest):
                found = ident
        if found is None:
            raise Unauthenticated("invalid token: check the token or ask an operator for a new one")
        return replace(found, token=token.strip())

    @property
    def tokens_hashes(self) -> int:
        """Number of configured tokens (for start-up logs; never the tokens)."""
        return len(self._by_digest)
