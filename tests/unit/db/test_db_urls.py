"""URL checking, redaction and fail-fast connection errors of tuneforge.common.db (no server needed)."""

from __future__ import annotations

import logging
import socket

import pytest

from tuneforge.common import errors
from tuneforge.common.db import DATABASE_URL_SETTING, create_db_engine, parse_database_url, redact_url

SECRET = "s3cr3t-Pa55"


def _closed_port() -> int:
    # Bound but never listening: connecting is refused at once.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"postgresql+psycopg://tf:{SECRET}@db:5432/meta", "postgresql+psycopg://tf:***@db:5432/meta"),
        (f"postgresql://tf:{SECRET}@db/meta", "postgresql://tf:***@db/meta"),
        (
            f"postgresql+psycopg://tf@db/meta?password={SECRET}",
            "postgresql+psycopg://tf@db/meta?password=***",
        ),
        ("postgresql+psycopg://tf@db/meta", "postgresql+psycopg://tf@db/meta"),
        ("sqlite:////var/lib/tuneforge/meta.db", "sqlite:////var/lib/tuneforge/meta.db"),
        (f"not a url://tf:{SECRET}@db", "not a url://tf:***@db"),
    ],
)
def test_redact_url_hides_passwords(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert SECRET not in redact_url(url)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("no-scheme-at-all", "is not a URL"),
        (f"mysql+pymysql://tf:{SECRET}@db/meta", "unsupported driver 'mysql+pymysql'"),
        (f"postgresql+psycopg2://tf:{SECRET}@db/meta", "unsupported driver 'postgresql+psycopg2'"),
        (f"postgresql+psycopg://tf:{SECRET}@db", "names no database"),
    ],
)
def test_bad_urls_name_the_setting_and_accepted_forms(url: str, problem: str) -> None:
    with pytest.raises(errors.InvalidInput) as info:
        parse_database_url(url)
    assert info.value.field == DATABASE_URL_SETTING
    text = str(info.value)
    assert problem in text
    assert "sqlite:///<path>" in text and "postgresql+psycopg://" in text
    assert SECRET not in text


@pytest.mark.parametrize(
    "url", ["postgresql://tf:pw@db/meta", "postgres://tf:pw@db/meta", "postgresql+psycopg://tf:pw@db/meta"]
)
def test_postgres_spellings_use_psycopg3(url: str) -> None:
    parsed = parse_database_url(url)
    assert parsed.drivername == "postgresql+psycopg"
    assert (parsed.username, parsed.password, parsed.host, parsed.database) == ("tf", "pw", "db", "meta")


def test_unreachable_postgres_is_unavailable_without_password(caplog: pytest.LogCaptureFixture) -> None:
    port = _closed_port()
    url = f"postgresql+psycopg://tuneforge:{SECRET}@127.0.0.1:{port}/meta"
    with caplog.at_level(logging.DEBUG), pytest.raises(errors.Unavailable) as info:
        create_db_engine(url)
    message = str(info.value)
    assert f"127.0.0.1:{port}/meta" in message
    assert "tuneforge:***@" in message
    assert DATABASE_URL_SETTING in message
    assert "server is running" in message
    assert SECRET not in message
    assert SECRET not in repr(info.value)
    assert SECRET not in caplog.text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unchecked_engine_is_lazy() -> None:
    engine = create_db_engine(f"postgresql+psycopg://tf:pw@127.0.0.1:{_closed_port()}/meta", check=False)
    try:
        assert engine.dialect.name == "postgresql"
        assert engine.pool._pre_ping  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_sqlite_folder_that_cannot_exist_is_invalid_input(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(errors.InvalidInput) as info:
        create_db_engine(f"sqlite:///{blocker}/sub/meta.db")
    assert info.value.field == DATABASE_URL_SETTING
    assert "writable folder" in str(info.value)
