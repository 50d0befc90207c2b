"""The identity an evaluation's leases are released as after a restart (``common.peers.credentials``)."""

from __future__ import annotations

from tuneforge.common.peers.credentials import ConfiguredTenantTokens

SPEC = "acme:tok-a-1234567890,acme:tok-b-1234567890\n# globex:tok-x-1234567890,acme2:tok-c-1234567890"


def test_each_tenant_acts_with_its_first_configured_token() -> None:
    tokens = ConfiguredTenantTokens(SPEC, service_name="evaluation")
    acme, acme2 = tokens.identity_for("acme"), tokens.identity_for("acme2")
    assert acme is not None and acme.token == "tok-a-1234567890" and acme.subject == "acme/evaluation-service"
    assert acme2 is not None and acme2.token == "tok-c-1234567890"
    assert "tok-a" not in repr(acme)  # never logged
    assert tokens.identity_for("globex") is None  # commented out
    assert tokens.identity_for("default") is None


def test_without_auth_only_the_default_tenant_acts_and_without_a_token() -> None:
    tokens = ConfiguredTenantTokens("", auth_disabled=True, service_name="evaluation")
    default = tokens.identity_for("default")
    assert default is not None and default.tenant == "default" and default.token == ""
    assert tokens.identity_for("acme") is None
