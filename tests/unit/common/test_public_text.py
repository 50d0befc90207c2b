"""Client messages: bounded echoes, and no server path or URL."""

import sys

import pytest

from tuneforge.common.public_text import (
    MAX_MESSAGE_CHARS,
    echo,
    public_message,
    register_private_path,
    scrub_paths,
)


def test_echo_cuts_long_values_with_an_ellipsis():
    assert echo("short") == "'short'"
    long = echo("n" * 30_000)
    assert len(long) < 260 and long.endswith("... (30000 characters)")


@pytest.mark.parametrize("text", [
    "cannot read /work/app/.run/models/smollm2/config.json: missing",
    f"error in {sys.prefix}/lib/python3.11/site-packages/transformers/x.py",
    "object file:///srv/tuneforge/objects/tenants/acme/x is damaged",
    "cache at /root/.cache/tuneforge/versions/v1 is stale",
    r"C:\Users\me\data\rows.jsonl is open",
])
def test_server_paths_never_reach_a_client(text):
    out = public_message(text)
    assert "/work/" not in out and "site-packages" not in out and "/srv/" not in out and "/root/" not in out
    assert "Users" not in out and "<" in out


def test_registered_roots_become_labels_and_object_keys_stay(tmp_path):
    register_private_path(tmp_path / "models", "models")
    out = scrub_paths(f"model folder {tmp_path}/models/tiny lacks config.json; key tenants/acme/x.jsonl; ratio 1/2")
    assert out == "model folder <models>/tiny lacks config.json; key tenants/acme/x.jsonl; ratio 1/2"


def test_messages_are_bounded():
    assert len(public_message("x" * 1_000_000)) == MAX_MESSAGE_CHARS
