"""The metadata store on both backends (``db_url``: a SQLite file, then a real PostgreSQL 15)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from tests.fixtures.sample_migrations import ALPHA, BETA
from tests.fixtures.sample_migrations.tables import alpha_items, alpha_tags, beta_events

from tuneforge.common import errors
from tuneforge.common.db import (
    alembic_config,
    create_db_engine,
    current_revision,
    make_sessionmaker,
    run_migrations,
    session_scope,
    utcnow,
)

pytestmark = pytest.mark.integration

ALPHA_HEAD, BETA_HEAD = "a1b2c3d4e5f6", "b1c2d3e4f5a6"
ALPHA_TABLE, BETA_TABLE = "alembic_version_alpha", "alembic_version_beta"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def migrated(engine: Engine) -> Engine:
    run_migrations(engine, ALPHA, ALPHA_TABLE)
    return engine


def _tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_migrations_apply_from_scratch_then_are_a_no_op(db_url: str, engine: Engine) -> None:
    assert current_revision(engine, ALPHA_TABLE) is None
    assert run_migrations(db_url, ALPHA, ALPHA_TABLE) == ALPHA_HEAD
    assert _tables(engine) == {"alpha_items", "alpha_tags", ALPHA_TABLE}
    with session_scope(engine) as session:
        session.execute(alpha_items.insert().values(id=1, tenant="t1", name="kept", created_at=utcnow()))

    assert run_migrations(db_url, ALPHA, ALPHA_TABLE) == ALPHA_HEAD
    assert _tables(engine) == {"alpha_items", "alpha_tags", ALPHA_TABLE}
    with engine.connect() as connection:
        assert connection.execute(sa.select(alpha_items.c.name)).scalars().all() == ["kept"]
        assert connection.execute(sa.text(f"SELECT version_num FROM {ALPHA_TABLE}")).scalars().all() == [
            ALPHA_HEAD
        ]


def test_schema_has_the_conventional_constraint_names(migrated: Engine) -> None:
    inspector = sa.inspect(migrated)
    assert [c["name"] for c in inspector.get_unique_constraints("alpha_items")] == [
        "uq_alpha_items_tenant_name"
    ]
    # PostgreSQL also lists the unique constraint's own index; it is the constraint, not an index.
    indexes = [i["name"] for i in inspector.get_indexes("alpha_items") if not i.get("duplicates_constraint")]
    assert indexes == ["ix_alpha_items_tenant"]
    assert [f["name"] for f in inspector.get_foreign_keys("alpha_tags")] == [
        "fk_alpha_tags_item_id_alpha_items"
    ]


def test_two_services_share_one_database_with_their_own_version_tables(engine: Engine) -> None:
    assert run_migrations(engine, ALPHA, ALPHA_TABLE) == ALPHA_HEAD
    assert run_migrations(engine, BETA, BETA_TABLE) == BETA_HEAD
    assert _tables(engine) == {"alpha_items", "alpha_tags", "beta_events", ALPHA_TABLE, BETA_TABLE}
    assert current_revision(engine, ALPHA_TABLE) == ALPHA_HEAD
    assert current_revision(engine, BETA_TABLE) == BETA_HEAD
    with engine.connect() as connection:
        cfg = alembic_config(ALPHA, ALPHA_TABLE)
        cfg.attributes["connection"] = connection
        # Autogenerate finds the schema equal to alpha's metadata and ignores beta's tables
        # (it would otherwise propose dropping them): `check` raises on any difference.
        command.check(cfg)


def test_a_foreign_history_is_refused(engine: Engine) -> None:
    run_migrations(engine, ALPHA, ALPHA_TABLE)
    with pytest.raises(errors.FailedPrecondition) as info:
        run_migrations(engine, BETA, ALPHA_TABLE)  # beta's scripts do not know alpha's revision
    assert ALPHA_HEAD in str(info.value) and ALPHA_TABLE in str(info.value)


def test_a_failing_migration_leaves_no_half_schema(engine: Engine, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    (broken / "versions").mkdir(parents=True)
    (broken / "env.py").write_text((ALPHA / "env.py").read_text())
    (broken / "versions" / "c0ffee000001_half.py").write_text(
        '"""Creates a table, then fails."""\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        'revision = "c0ffee000001"\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade():\n"
        '    op.create_table("half", sa.Column("id", sa.Integer, primary_key=True))\n'
        '    raise RuntimeError("migration bug")\n'
    )
    with pytest.raises(RuntimeError, match="migration bug"):
        run_migrations(engine, broken, "alembic_version_broken")
    assert "half" not in _tables(engine)
    assert "alembic_version_broken" not in _tables(engine)


def test_concurrent_migrations_queue_instead_of_failing(db_url: str) -> None:
    # Replicas starting together: each runs the upgrade; exactly one creates the schema.
    results: list[object] = []

    def migrate() -> None:
        try:
            results.append(run_migrations(db_url, ALPHA, ALPHA_TABLE))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below: a failure must fail the test
            results.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [ALPHA_HEAD] * 3


@pytest.mark.parametrize(
    "written",
    [
        datetime(2025, 6, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2))),
        datetime(2025, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=-8))),
        datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
    ],
    ids=["plus-2", "minus-8", "utc"],
)
def test_tzdatetime_round_trips_as_aware_utc(migrated: Engine, written: datetime) -> None:
    with session_scope(migrated) as session:
        session.execute(beta_like_insert(written))
    with migrated.connect() as connection:
        read = connection.execute(sa.select(alpha_items.c.created_at)).scalar_one()
    assert read == written  # the same instant
    assert read.tzinfo is UTC or read.utcoffset() == timedelta(0)
    assert read.astimezone(UTC).replace(tzinfo=None) == written.astimezone(UTC).replace(tzinfo=None)


def beta_like_insert(at: datetime) -> sa.Insert:
    return alpha_items.insert().values(id=1, tenant="t", name="n", created_at=at)


def test_tzdatetime_orders_by_instant_not_by_wall_time(engine: Engine) -> None:
    run_migrations(engine, BETA, BETA_TABLE)
    east = datetime(2025, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=9)))  # 01:00 UTC
    west = datetime(2025, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=-1)))  # 03:00 UTC
    with session_scope(engine) as session:
        session.execute(
            beta_events.insert(), [{"id": 1, "tenant": "t", "at": west}, {"id": 2, "tenant": "t", "at": east}]
        )
    with engine.connect() as connection:
        ids = connection.execute(sa.select(beta_events.c.id).order_by(beta_events.c.at)).scalars().all()
        later = (
            connection.execute(
                sa.select(beta_events.c.id).where(beta_events.c.at > datetime(2025, 1, 1, 2, 0, tzinfo=UTC))
            )
            .scalars()
            .all()
        )
    assert ids == [2, 1]
    assert later == [1]


def test_session_scope_commits_on_success(migrated: Engine) -> None:
    sessions = make_sessionmaker(migrated)
    with session_scope(sessions) as session:
        session.execute(alpha_items.insert().values(id=1, tenant="t", name="a", created_at=utcnow()))
    with session_scope(sessions) as session:
        assert session.execute(sa.select(alpha_items.c.name)).scalars().all() == ["a"]


def test_session_scope_rolls_back_on_error(migrated: Engine) -> None:
    with pytest.raises(ValueError, match="domain check failed"), session_scope(migrated) as session:
        session.execute(alpha_items.insert().values(id=1, tenant="t", name="a", created_at=utcnow()))
        session.flush()
        raise ValueError("domain check failed")
    with migrated.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(alpha_items)).scalar() == 0


def test_session_scope_rolls_back_on_constraint_violation(migrated: Engine) -> None:
    row = {"tenant": "t", "name": "same", "created_at": utcnow()}
    with pytest.raises(IntegrityError), session_scope(migrated) as session:
        session.execute(alpha_items.insert().values(id=1, **row))
        session.execute(alpha_tags.insert().values(id=1, item_id=1, tag="x"))
        session.execute(alpha_items.insert().values(id=2, **row))  # violates uq_alpha_items_tenant_name
    with migrated.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(alpha_items)).scalar() == 0
        assert connection.execute(sa.select(sa.func.count()).select_from(alpha_tags)).scalar() == 0


def test_foreign_keys_cascade_on_both_backends(migrated: Engine) -> None:
    with session_scope(migrated) as session:
        session.execute(alpha_items.insert().values(id=1, tenant="t", name="a", created_at=utcnow()))
        session.execute(alpha_tags.insert().values(id=1, item_id=1, tag="x"))
    with session_scope(migrated) as session:
        session.execute(alpha_items.delete().where(alpha_items.c.id == 1))
    with migrated.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(alpha_tags)).scalar() == 0
