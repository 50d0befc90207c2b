import pytest

from tuneforge.common.errors import InvalidInput
from tuneforge.common.paging import next_page_token, page_bounds, paginate


@pytest.mark.parametrize("size, token, field", [
    (-1, "", "page.page_size"), (1001, "", "page.page_size"),
    (10, "abc", "page.page_token"), (10, "²", "page.page_token"), (10, "12", "page.page_token"),
])
def test_bad_pages_are_invalid_input_naming_the_field(size, token, field):
    with pytest.raises(InvalidInput) as info:
        page_bounds(size, token)
    assert info.value.violations[0].field == field


def test_pages_walk_the_whole_list_once():
    items, token, seen = list(range(7)), "", []
    while True:
        page, token = paginate(items, 3, token)
        seen += page
        if not token:
            break
    assert seen == items
    assert page_bounds(0, "") == (0, 50)
    assert next_page_token(0, 3, 3) == ""


@pytest.mark.parametrize("offset", [2**31, 2**62, 10**300, -1])
def test_forged_tokens_with_huge_numbers_are_invalid_input(offset):
    import base64

    token = base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()
    with pytest.raises(InvalidInput) as info:
        page_bounds(10, token)
    assert info.value.violations[0].field == "page.page_token"


def test_an_over_long_token_is_invalid_input_without_decoding():
    with pytest.raises(InvalidInput):
        page_bounds(10, "b:" * (1 << 19))
