"""Database URLs and engines: SQLite (the embedded default) or PostgreSQL through psycopg 3.

Accepted URLs (setting ``TUNEFORGE_DATABASE_URL``):

* ``sqlite:///<path>``: a file; its folder is created. WAL journal, foreign keys on, a busy
  timeout, and real transactions (SQLAlchemy emits BEGIN, so DDL and SELECTs are transactional).
* ``sqlite:///:memory:``: one in-memory database shared by the engine's single connection (tests).
* ``postgresql+psycopg://<user>:<password>@<host>:<port>/<database>``; ``postgresql://`` and
  ``postgres://`` are read as psycopg URLs too.

Messages and logs show URLs through ``redact_url`` only: passwords never leave this module.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import StaticPool

from tuneforge.common import errors

log = logging.getLogger(__name__)

DATABASE_URL_SETTING = "TUNEFORGE_DATABASE_URL"
ACCEPTED_FORMS = (
    "sqlite:///<path> (embedded default) or postgresql+psycopg://<user>:<password>@<host>:<port>/<database>"
)
# Writers wait their turn this long (a training job's checkpoint writes, concurrent creates...)
# before a call fails UNAVAILABLE; transactions here are short, so the wait is normally milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 30_000
POSTGRES_CONNECT_TIMEOUT_S = 10
# Execution option: ``connection.execution_options(**{SQLITE_BEGIN_IMMEDIATE: True})``.
SQLITE_BEGIN_IMMEDIATE = "tuneforge_sqlite_begin_immediate"

_POSTGRES_DRIVERS = {"postgresql+psycopg", "postgresql", "postgres"}
_SQLITE_DRIVERS = {"sqlite", "sqlite+pysqlite"}
_MEMORY_DATABASES = {None, "", ":memory:"}
# Fallback for strings SQLAlchemy cannot parse: hide whatever sits between "user:" and "@".
_USERINFO_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def redact_url(url: str | URL) -> str:
    """Render a database URL with its password (and any password query argument) replaced by ``***``.

    Args:
        url: a URL string or SQLAlchemy ``URL``; unparseable strings are redacted by pattern.

    Returns:
        The URL, safe to log and to put in error messages.
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        return _USERINFO_PASSWORD.sub(r"\1***@", str(url))
    secret_keys = [k for k in parsed.query if "password" in k.lower()]
    if secret_keys:
        parsed = parsed.update_query_dict(dict.fromkeys(secret_keys, "***"))
    rendered = parsed.render_as_string(hide_password=True)
    return rendered.replace("=%2A%2A%2A", "=***")  # the query value is URL-encoded on rendering


def parse_database_url(url: str | URL) -> URL:
    """Check a database URL and normalise PostgreSQL URLs to the psycopg 3 driver.

    Args:
        url: the value of ``TUNEFORGE_DATABASE_URL`` (or a ``URL``).

    Returns:
        The parsed URL, ``postgresql+psycopg`` for every PostgreSQL spelling.

    Raises:
        errors.InvalidInput: the URL is empty, unparseable, of another database, or incomplete;
            the violation names ``TUNEFORGE_DATABASE_URL`` and the accepted forms.
    """
    if isinstance(url, str) and not url.strip():
        raise _bad_url("is empty")
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        raise _bad_url(f"{redact_url(url)!r} is not a URL") from None
    if parsed.drivername in _POSTGRES_DRIVERS:
        if not parsed.database:
            raise _bad_url(f"{redact_url(parsed)!r} names no database (add /<database>)")
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername in _SQLITE_DRIVERS:
        return parsed
    raise _bad_url(f"{redact_url(parsed)!r} uses unsupported driver {parsed.drivername!r}")


def _bad_url(problem: str) -> errors.InvalidInput:
    return _invalid_setting(f"{problem}; use {ACCEPTED_FORMS}")


def _invalid_setting(description: str) -> errors.InvalidInput:
    violation = errors.FieldViolation(DATABASE_URL_SETTING, description)
    return errors.InvalidInput("invalid database URL", violations=[violation])


def create_db_engine(url: str | URL, *, check: bool = True, echo: bool = False) -> Engine:
    """Create the SQLAlchemy engine of a service's metadata store.

    Args:
        url: ``sqlite:///<path>`` or ``postgresql+psycopg://...`` (see the module docstring).
        check: connect once now (fail fast at start-up) rather than at the first request.
        echo: log every SQL statement (debugging only).

    Returns:
        An engine; SQLite engines have WAL, foreign keys, a busy timeout and real transactions,
        PostgreSQL engines ping pooled connections before use.

    Raises:
        errors.InvalidInput: the URL is not an accepted form.
        errors.Unavailable: ``check`` is on and the database cannot be reached.
    """
    parsed = parse_database_url(url)
    if parsed.drivername.startswith("sqlite"):
        engine = _sqlite_engine(parsed, echo=echo)
    else:
        engine = _postgres_engine(parsed, echo=echo)
    if check:
        check_connection(engine)
    return engine


def _sqlite_engine(url: URL, *, echo: bool) -> Engine:
    kwargs: dict[str, Any] = {"echo": echo}
    if url.database in _MEMORY_DATABASES:
        # One connection, shared: every new connection to :memory: would be a new, empty database.
        kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        folder = Path(str(url.database)).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _invalid_setting(
                f"cannot create the SQLite folder {folder} ({exc.strerror}): "
                "point the URL at a writable folder"
            ) from None
    engine = create_engine(url, **kwargs)
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    event.listen(engine, "commit", _end_sqlite_transaction)
    event.listen(engine, "rollback", _end_sqlite_transaction)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # Take BEGIN away from the sqlite3 driver (it skips it before SELECT and DDL, so migrations
    # would not be atomic); SQLAlchemy emits it in _begin_sqlite_transaction instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across app crashes; WAL keeps it safe
    finally:
        cursor.close()


def _enable_wal(cursor: Any) -> None:
    # Switching a new database to WAL needs its exclusive lock, and SQLite answers "database is
    # locked" at once there, without the busy handler: connections opening a fresh file together
    # (replicas migrating at start-up) would fail. Wait our turn as the busy timeout would.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)  # backoff between lock attempts, bounded by the busy timeout
            delay = min(delay * 2, 0.1)


_open_transactions = threading.local()


def _begin_sqlite_transaction(connection: Any) -> None:
    # A deferred BEGIN that reads and then writes fails at once (SQLITE_BUSY / "database is
    # locked", no waiting) when another writer committed meanwhile: the busy timeout does not apply
    # to a read transaction upgrading to a write. So every outermost transaction of a file
    # database takes the write lock up front (BEGIN IMMEDIATE) and waits up to busy_timeout for
    # its turn; WAL readers of other processes are not blocked. A transaction opened while this
    # thread already holds one (a nested read) stays deferred: IMMEDIATE would wait on itself.
    depth = getattr(_open_transactions, "depth", 0)
    memory = connection.engine.url.database in _MEMORY_DATABASES
    immediate = connection.get_execution_options().get(SQLITE_BEGIN_IMMEDIATE, depth == 0 and not memory)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
    _open_transactions.depth = depth + 1


def _end_sqlite_transaction(_connection: Any) -> None:
    _open_transactions.depth = max(0, getattr(_open_transactions, "depth", 1) - 1)


def _postgres_engine(url: URL, *, echo: bool) -> Engine:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        # Without it a black-holed host hangs start-up for minutes instead of failing fast.
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    return create_engine(url, echo=echo, pool_pre_ping=True, connect_args=connect_args)


def check_connection(engine: Engine) -> None:
    """Run ``SELECT 1`` on the engine.

    Raises:
        errors.Unavailable: the database cannot be reached; the message names the redacted URL.
    """
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except DBAPIError as exc:
        raise unavailable(engine.url, exc) from None


def unavailable(url: URL, exc: BaseException, *, for_client: bool = False) -> errors.Unavailable:
    """Build the ``Unavailable`` error for a failed database call, with no secret in it.

    Args:
        url: the engine's URL (shown redacted, in the operator's message only).
        exc: the SQLAlchemy/driver error; its first line is kept, scrubbed of the password.
        for_client: the error answers a request: it names neither the URL nor the file (both go
            to the log), only the cause and that retrying later may work.

    Returns:
        An error whose message names the database, the cause and the fix.
    """
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines() or [type(cause).__name__]
    reason = _scrub(lines[0], url)
    if url.drivername.startswith("sqlite"):
        fix = "check that the folder exists and is writable and that no other process holds a lock"
    else:
        fix = "check that the server is running and reachable and that the credentials are right"
    message = (
        f"database {redact_url(url)} is unavailable ({reason}): {fix}; it is configured by "
        f"{DATABASE_URL_SETTING}"
    )
    log.warning("%s", message)
    if for_client:
        busy = "locked" in reason or "busy" in reason
        cause = "busy with other writes" if busy else "unavailable"
        return errors.Unavailable(f"the service's metadata database is {cause}: retry in a moment "
                                  "(operators: the service log has the details)", reason="DATABASE_UNAVAILABLE")
    return errors.Unavailable(message, reason="DATABASE_UNAVAILABLE")


def _scrub(text_: str, url: URL) -> str:
    # Driver messages do not normally echo the password, but a DSN in an error must not leak it.
    if url.password:
        text_ = text_.replace(str(url.password), "***")
    return text_
