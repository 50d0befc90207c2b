"""The identity a service acts as for a tenant when no caller is left (after a restart).

A service calls its peers with the caller's own token (``Identity.token``), which lives in memory
only. Work a stopped process left behind (a training job to resume, an evaluation whose dataset
leases must be released) has no caller any more: it acts as the tenant through a token of that
tenant from ``TUNEFORGE_AUTH_TOKENS``, which every service shares, so the peer applies the same
tenancy as for the original caller. Tokens are never logged (``Identity`` hides them from ``repr``).
"""

from __future__ import annotations

import re

from tuneforge.common.auth import DEFAULT_TENANT, Identity


class ConfiguredTenantTokens:
    """An identity per tenant from the ``tenant:token`` pairs the services share.

    Args:
        auth_tokens: ``TUNEFORGE_AUTH_TOKENS`` (``tenant:token`` pairs, comma- or newline-separated).
        auth_disabled: ``TUNEFORGE_AUTH_DISABLED``: tenant ``default`` then acts without a token.
        service_name: names the acting service in the identity's subject (audit logs).
    """

    def __init__(self, auth_tokens: str, *, auth_disabled: bool = False, service_name: str = "service") -> None:
        self._tokens: dict[str, str] = {}
        for entry in re.split(r"[,\n]", auth_tokens):
            tenant, sep, token = entry.strip().partition(":")
            if sep and token.strip() and not tenant.startswith("#"):
                self._tokens.setdefault(tenant.strip(), token.strip())  # the first token of a tenant wins
        self._disabled = auth_disabled
        self._subject = f"{service_name}-service"

    def identity_for(self, tenant: str) -> Identity | None:
        """An identity of ``tenant`` carrying its first configured token, or None when it has none."""
        if self._disabled and tenant == DEFAULT_TENANT:
            return Identity(DEFAULT_TENANT, self._subject)
        token = self._tokens.get(tenant)
        return Identity(tenant, f"{tenant}/{self._subject}", token) if token else None
