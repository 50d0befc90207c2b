"""Object-key and tenant validation: every unsafe form is refused with a message naming it."""

from __future__ import annotations

import pytest

from tuneforge.common.errors import InvalidInput
from tuneforge.common.storage import check_key, check_prefix, check_tenant, tenant_prefix

GOOD_KEYS = [
    "a",
    "tenants/acme/datasets/ds-1/data.parquet",
    "ck/step-100/model-00001-of-00002.safetensors",
    "dir/.gitattributes",
    "unicode/naïve-é.txt",
    "x" * 1024,
    "50%off",  # a lone percent sign is not an escape
]

BAD_KEYS = [
    ("", "empty"),
    ("../etc/passwd", r"'\.\.' segment"),
    ("a/../../b", r"'\.\.' segment"),
    ("a/./b", r"'\.' or"),
    ("..", r"'\.\.' segment"),
    ("%2e%2e/x", "percent-encoded"),
    ("%2E%2E/x", "percent-encoded"),
    ("a%2fb", "percent-encoded"),
    ("a%5cb", "percent-encoded"),
    ("%252e%252e/x", "percent-encoded"),
    ("/abs/path", "absolute"),
    ("C:/windows", "absolute"),
    ("a\\b", "backslash"),
    ("..\\x", "backslash"),
    ("a\x00b", "control character"),
    ("a\nb", "control character"),
    ("a\x7fb", "control character"),
    ("a\x85b", "control character"),
    ("a//b", "empty segment"),
    ("a/", "empty segment"),
    (".meta/k", "reserved"),
    (".tmp/k", "reserved"),
    ("x" * 1025, "longer than 1024"),
    ("é" * 513, "longer than 1024"),  # 1026 UTF-8 bytes
]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_good_keys_pass_unchanged(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(("key", "why"), BAD_KEYS, ids=[repr(k)[:40] for k, _ in BAD_KEYS])
def test_bad_keys_are_refused_naming_the_field_and_cause(key: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why) as err:
        check_key(key, field="checkpoint_prefix")

    assert err.value.field == "checkpoint_prefix"


def test_non_string_key_is_refused() -> None:
    with pytest.raises(InvalidInput, match="string"):
        check_key(b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["", "a/", "a", "tenants/acme/"])
def test_prefixes(prefix: str) -> None:
    assert check_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "../", "a//", "%2e%2e/"])
def test_bad_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidInput):
        check_prefix(prefix)


@pytest.mark.parametrize("tenant", ["acme", "a", "0team-1", "a" * 63])
def test_tenant_prefix(tenant: str) -> None:
    assert tenant_prefix(tenant) == f"tenants/{tenant}/"
    assert check_key(tenant_prefix(tenant) + "x") == f"tenants/{tenant}/x"


@pytest.mark.parametrize("tenant", ["", "Acme", "-acme", "a_b", "a/b", "..", "a" * 64, "acme\n"])
def test_bad_tenants(tenant: str) -> None:
    with pytest.raises(InvalidInput, match="tenant") as err:
        check_tenant(tenant)
    assert err.value.field == "tenant"
