"""Behaviour that needs the real PostgreSQL server itself (not just a database URL)."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from tests.fixtures.postgres import PostgresServer

from tuneforge.common import errors
from tuneforge.common.db import DATABASE_URL_SETTING, create_db_engine, session_scope

pytestmark = pytest.mark.integration


def test_fixture_runs_postgresql_15_with_an_empty_database(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    assert postgres_server.version.startswith("15.")
    engine = create_db_engine(postgres_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
        with engine.connect() as connection:
            assert connection.execute(sa.text("SHOW server_version")).scalar().startswith("15.")
    finally:
        engine.dispose()


def test_missing_database_is_unavailable(postgres_server: PostgresServer) -> None:
    url = postgres_server.url("no_such_db").replace("postgres@", "postgres:hunter2-secret@")
    with pytest.raises(errors.Unavailable) as info:
        create_db_engine(url)
    message = str(info.value)
    assert 'database "no_such_db" does not exist' in message
    assert DATABASE_URL_SETTING in message
    assert "hunter2-secret" not in message


def test_a_dropped_connection_is_unavailable_then_the_pool_recovers(postgres_url: str) -> None:
    engine = create_db_engine(postgres_url)
    database = make_url(postgres_url).database
    try:
        with pytest.raises(errors.Unavailable) as info, session_scope(engine) as session:
            session.execute(sa.text("SELECT 1"))
            _terminate_backends(postgres_url, database)  # e.g. a failover or an admin restart
            session.execute(sa.text("SELECT 1"))
        assert "is unavailable" in str(info.value)
        with session_scope(engine) as session:  # pool_pre_ping replaces the dead connection
            assert session.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def _terminate_backends(url: str, database: str | None) -> None:
    parsed = make_url(url)
    with psycopg.connect(
        host=parsed.host, port=parsed.port, user="postgres", dbname="postgres", autocommit=True
    ) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
