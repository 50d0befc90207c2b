import pytest

from tuneforge.common.auth import Identity, TokenAuthenticator, bound_identity, current_identity
from tuneforge.common.errors import InvalidInput, Unauthenticated

TOK = "0123456789abcdef0123"


def test_token_maps_to_tenant():
    auth = TokenAuthenticator.parse(f"acme:{TOK}, acme2:{TOK}x\n# comment")
    assert auth.authenticate(f"Bearer {TOK}").tenant == "acme"
    assert auth.authenticate(f"bearer {TOK}x").tenant == "acme2"


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", f"Bearer {TOK}nope"])
def test_bad_credentials_are_unauthenticated(header):
    with pytest.raises(Unauthenticated):
        TokenAuthenticator.parse(f"acme:{TOK}").authenticate(header)


@pytest.mark.parametrize("spec", ["acme", "ACME:" + TOK, "acme:short"])
def test_bad_token_specs_name_the_entry_without_the_token(spec):
    with pytest.raises(InvalidInput) as info:
        TokenAuthenticator.parse(spec)
    assert info.value.violations[0].field == "TUNEFORGE_AUTH_TOKENS[0]"
    assert TOK not in str(info.value)


def test_identity_is_bound_only_inside_the_block():
    with bound_identity(Identity("acme", "s")):
        assert current_identity().tenant == "acme"
    with pytest.raises(Unauthenticated):
        current_identity()
