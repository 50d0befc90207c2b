"""SQLite engine settings and the TZDateTime type (embedded backend, no server)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, StatementError

from tuneforge.common.db import TZDateTime, create_db_engine, new_metadata, read_scope, session_scope, utcnow
from tuneforge.common.errors import Unavailable


@pytest.fixture
def sqlite_engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = create_db_engine(f"sqlite:///{tmp_path / 'nested' / 'meta.db'}")
    yield engine
    engine.dispose()


def test_sqlite_file_and_folder_are_created(sqlite_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert (tmp_path / "nested" / "meta.db").is_file()


@pytest.mark.parametrize(
    ("pragma", "expected"),
    [("journal_mode", "wal"), ("foreign_keys", 1), ("busy_timeout", 30000), ("synchronous", 1)],
)
def test_sqlite_pragmas_are_set_on_every_connection(sqlite_engine, pragma: str, expected: object) -> None:  # type: ignore[no-untyped-def]
    with sqlite_engine.connect() as connection:
        assert connection.exec_driver_sql(f"PRAGMA {pragma}").scalar() == expected


def test_connections_opening_a_new_database_together_all_get_wal(tmp_path: Path) -> None:
    # The switch to WAL takes an exclusive lock that SQLite refuses at once ("database is locked",
    # no busy handler): replicas opening a fresh file together used to fail about one time in ten.
    def open_and_write(url: str, failures: list[BaseException]) -> None:
        try:
            engine = create_db_engine(url)  # it connects once to check the database
            with engine.begin() as connection:
                connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS marks (id INTEGER)")
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            engine.dispose()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    failures: list[BaseException] = []
    for attempt in range(60):
        url = f"sqlite:///{tmp_path / f'fresh-{attempt}.db'}"
        threads = [threading.Thread(target=open_and_write, args=(url, failures)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert failures == []


def test_sqlite_enforces_foreign_keys(sqlite_engine) -> None:  # type: ignore[no-untyped-def]
    metadata = new_metadata()
    parent = sa.Table("parent", metadata, sa.Column("id", sa.Integer, primary_key=True))
    child = sa.Table(
        "child",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("parent_id", sa.ForeignKey(parent.c.id), nullable=False),
    )
    metadata.create_all(sqlite_engine)
    with pytest.raises(IntegrityError, match="FOREIGN KEY"), session_scope(sqlite_engine) as session:
        session.execute(child.insert().values(id=1, parent_id=42))
    with sqlite_engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(child)).scalar() == 0


def test_sqlite_ddl_is_transactional(sqlite_engine) -> None:  # type: ignore[no-untyped-def]
    # sqlite3's own transaction control would autocommit the CREATE TABLE before the error.
    with pytest.raises(RuntimeError), sqlite_engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        raise RuntimeError("boom")
    assert "t" not in sa.inspect(sqlite_engine).get_table_names()


def test_in_memory_sqlite_keeps_its_data_across_connections() -> None:
    engine = create_db_engine("sqlite:///:memory:")
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            connection.exec_driver_sql("INSERT INTO t VALUES (7)")
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT x FROM t").scalar() == 7
    finally:
        engine.dispose()


def test_utcnow_is_aware_utc() -> None:
    now = utcnow()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
    assert abs((now - datetime.now(UTC)).total_seconds()) < 5


def test_tzdatetime_refuses_naive_datetimes(sqlite_engine) -> None:  # type: ignore[no-untyped-def]
    metadata = new_metadata()
    events = sa.Table("events", metadata, sa.Column("at", TZDateTime(), nullable=False))
    metadata.create_all(sqlite_engine)
    with pytest.raises(StatementError, match="naive datetime"), sqlite_engine.begin() as connection:
        connection.execute(events.insert().values(at=datetime(2025, 1, 1, 12, 0)))


def test_tzdatetime_stores_utc_wall_time_on_sqlite(sqlite_engine) -> None:  # type: ignore[no-untyped-def]
    metadata = new_metadata()
    events = sa.Table("events", metadata, sa.Column("at", TZDateTime(), nullable=False))
    metadata.create_all(sqlite_engine)
    paris_summer = timezone(timedelta(hours=2))
    with sqlite_engine.begin() as connection:
        connection.execute(events.insert().values(at=datetime(2025, 6, 1, 14, 30, tzinfo=paris_summer)))
    with sqlite_engine.connect() as connection:
        raw = connection.exec_driver_sql("SELECT at FROM events").scalar()
    assert raw.startswith("2025-06-01 12:30:00")


def test_concurrent_read_then_write_transactions_wait_their_turn(tmp_path: Path) -> None:
    """Writers that read first (get, then update) in many threads and two engines (two processes'
    worth of connections) all commit: none is answered "database is locked"."""
    import threading

    url = f"sqlite:///{tmp_path / 'busy.db'}"
    engines = [create_db_engine(url), create_db_engine(url)]
    metadata = new_metadata()
    counter = sa.Table("counter", metadata, sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("n", sa.Integer, nullable=False))
    metadata.create_all(engines[0])
    with session_scope(engines[0]) as session:
        session.execute(counter.insert().values(id=1, n=0))
    errors: list[BaseException] = []

    def work(engine: sa.Engine) -> None:
        try:
            for _ in range(25):
                with session_scope(engine) as session:
                    n = session.execute(sa.select(counter.c.n).where(counter.c.id == 1)).scalar_one()
                    session.execute(counter.update().where(counter.c.id == 1).values(n=n + 1))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(engines[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    with session_scope(engines[0]) as session:
        assert session.execute(sa.select(counter.c.n)).scalar_one() == 8 * 25  # no lost update either
    for engine in engines:
        engine.dispose()


def _session_read(engine: sa.Engine, query: sa.Select) -> object:  # type: ignore[type-arg]
    with session_scope(engine, read_only=True) as session:
        return session.execute(query).scalar_one()


def _core_read(engine: sa.Engine, query: sa.Select) -> object:  # type: ignore[type-arg]
    with read_scope(engine) as connection:
        return connection.execute(query).scalar_one()


@pytest.mark.parametrize("read", [_session_read, _core_read], ids=["session_scope", "read_scope"])
def test_read_only_units_of_work_read_while_a_writer_holds_the_lock(tmp_path: Path, read) -> None:  # type: ignore[no-untyped-def]
    """A read-only unit of work (deferred BEGIN) reads the last committed state while another
    transaction holds the write lock; a plain one (BEGIN IMMEDIATE) would wait for the writer."""
    import threading

    url = f"sqlite:///{tmp_path / 'reads.db'}"
    engine = create_db_engine(url)
    metadata = new_metadata()
    counter = sa.Table("counter", metadata, sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("n", sa.Integer, nullable=False))
    metadata.create_all(engine)
    with session_scope(engine) as session:
        session.execute(counter.insert().values(id=1, n=1))
    holding, read_done = threading.Event(), threading.Event()

    def writer() -> None:
        with session_scope(engine) as session:  # BEGIN IMMEDIATE: the write lock, held until read_done
            session.execute(counter.update().where(counter.c.id == 1).values(n=2))
            holding.set()
            read_done.wait(60)

    thread = threading.Thread(target=writer)
    thread.start()
    assert holding.wait(60)
    seen = read(engine, sa.select(counter.c.n))
    read_done.set()
    thread.join(60)
    assert seen == 1  # read beside the writer, its uncommitted update unseen
    assert read(engine, sa.select(counter.c.n)) == 2
    with session_scope(engine) as session:  # the read left no transaction open: writes go on
        session.execute(counter.update().where(counter.c.id == 1).values(n=3))
    assert read(engine, sa.select(counter.c.n)) == 3
    engine.dispose()


def test_a_failed_core_read_is_unavailable_without_the_database_path(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    with pytest.raises(Unavailable) as caught, read_scope(engine) as connection:
        connection.exec_driver_sql("SELECT n FROM no_such_table")
    assert "meta.db" not in caught.value.message and "retry" in caught.value.message
    engine.dispose()


def test_a_locked_database_answers_without_its_path(tmp_path: Path) -> None:
    from sqlalchemy.exc import OperationalError

    from tuneforge.common.db.engine import unavailable

    engine = create_db_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    err = unavailable(engine.url, OperationalError("UPDATE x", {}, Exception("database is locked")), for_client=True)
    assert str(tmp_path) not in err.message and "meta.db" not in err.message and "busy" in err.message
    engine.dispose()
