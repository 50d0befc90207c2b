"""Units of work: one session, one transaction, committed on success and rolled back on error."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.common.db.engine import SQLITE_BEGIN_IMMEDIATE, unavailable

log = logging.getLogger(__name__)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Return the session factory a repository keeps for its lifetime.

    ``expire_on_commit=False``: rows returned from a unit of work stay readable after it commits
    (repositories convert them to domain dataclasses after the ``with`` block).
    """
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(bind: Engine | sessionmaker[Session], *, read_only: bool = False) -> Iterator[Session]:
    """Run a unit of work in one transaction.

    On a SQLite file every unit of work takes the write lock up front (``BEGIN IMMEDIATE``: see
    ``common.db.engine``), so units of work run one at a time. ``read_only=True`` opens a plain
    deferred transaction instead: reads run side by side (WAL), never waiting behind each other or
    a writer. Use it only for units of work that never write (a write in it may fail at once with
    "database is locked" when another writer got in first). PostgreSQL is the same either way.

    Example::

        with session_scope(sessions) as session:
            session.add(row)
        # committed here; any exception inside the block rolled everything back

    Args:
        bind: an engine, or (better, reused) a factory from ``make_sessionmaker``.

    Yields:
        A session inside a transaction; commit happens when the block exits cleanly.

    Raises:
        errors.Unavailable: the database could not be reached or refused the work for an
            operational reason (connection lost, locked database); retrying later may succeed.
        Exception: anything raised inside the block, re-raised after the rollback.
    """
    factory = bind if isinstance(bind, sessionmaker) else make_sessionmaker(bind)
    session = factory()
    try:
        if read_only:
            session.connection(execution_options={SQLITE_BEGIN_IMMEDIATE: False})
        yield session
        session.commit()
    except OperationalError as exc:
        _rollback_quietly(session)
        raise unavailable(session.get_bind().engine.url, exc, for_client=True) from exc
    except BaseException:
        _rollback_quietly(session)
        raise
    finally:
        session.close()


def _rollback_quietly(session: Session) -> None:
    # A rollback on a dead connection fails too; the caller must see the original error, not this.
    try:
        session.rollback()
    except DBAPIError:
        log.warning("rollback failed after an error; the connection is discarded", exc_info=True)


@contextmanager
def read_scope(bind: Engine | sessionmaker[Session]) -> Iterator[Connection]:
    """A read-only unit of work on a Core connection: one deferred transaction (SQLite: beside
    writers, like ``session_scope(read_only=True)``), rolled back at the end.

    For the hot reads of the API (GetJob, ListJobs, ListDatasets, GetManifest): an ORM session
    costs about as much again as the query itself, and these reads need none of its features.
    Execute prebuilt statements with ``bindparam`` values where a read is hot: building a
    statement per call costs more than running it on SQLite.

    Raises:
        errors.Unavailable: the database could not be reached or refused the read.
    """
    engine = bind.kw["bind"] if isinstance(bind, sessionmaker) else bind
    try:
        with engine.connect() as connection:
            connection = connection.execution_options(**{SQLITE_BEGIN_IMMEDIATE: False})
            with connection.begin() as transaction:
                yield connection
                transaction.rollback()  # nothing to commit: a read ends its transaction either way
    except OperationalError as exc:
        raise unavailable(engine.url, exc, for_client=True) from exc
