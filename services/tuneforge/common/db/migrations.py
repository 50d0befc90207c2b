"""Programmatic Alembic upgrades: each service has its own migrations folder and version table.

Services can then share one database: the datasets service records its revision in
``alembic_version_datasets``, the training service in ``alembic_version_training``, and neither
sees the other's history. See ``tuneforge.common.db`` for the ``env.py`` every service copies.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import InterfaceError, OperationalError

from tuneforge.common import errors
from tuneforge.common.db.engine import (
    SQLITE_BEGIN_IMMEDIATE,
    create_db_engine,
    redact_url,
    unavailable,
)
from tuneforge.common.public_text import echo

# PostgreSQL folds unquoted identifiers to lower case and cuts them at 63 bytes.
_VERSION_TABLE = re.compile(r"^alembic_version_[a-z][a-z0-9_]{0,46}$")


def version_table_for(service: str) -> str:
    """Return the version table of a service, e.g. ``alembic_version_datasets``."""
    return f"alembic_version_{service}"


def alembic_config(
    script_location: str | Path, version_table: str, *, url: str | URL | None = None
) -> Config:
    """Build the Alembic ``Config`` that ``tuneforge.common.db.alembic_env.run`` reads.

    Use it for ``alembic`` commands other than upgrade, e.g. to write a revision::

        from alembic import command
        cfg = alembic_config("services/tuneforge/datasets/migrations", "alembic_version_datasets",
                             url="sqlite:///.cache/dev.db")
        command.revision(cfg, message="add dataset tags", autogenerate=True)

    Args:
        script_location: the service's migrations folder (or ``package:folder``).
        version_table: ``alembic_version_<service>``.
        url: the database, for commands that connect on their own (autogenerate, offline SQL).

    Raises:
        errors.InvalidInput: the folder has no ``env.py`` or the version table name is not
            ``alembic_version_<service>``.
    """
    _check_version_table(version_table)
    location = _check_script_location(script_location)
    cfg = Config()
    # Config values go through configparser interpolation: a literal % must be doubled.
    cfg.set_main_option("script_location", location.replace("%", "%%"))
    cfg.attributes["version_table"] = version_table
    if url is not None:
        cfg.attributes["url"] = url
    return cfg


def run_migrations(
    url_or_engine: str | URL | Engine,
    script_location: str | Path,
    version_table: str,
    *,
    revision: str = "head",
) -> str | None:
    """Upgrade a service's schema to ``revision`` (default: head) in one transaction.

    Running it again is a no-op. On PostgreSQL, concurrent callers (replicas starting together)
    queue on an advisory lock keyed by the version table, so one migrates and the others then see
    nothing to do; on SQLite they queue on the database write lock (BEGIN IMMEDIATE). DDL is
    transactional on both, so a failed migration leaves no half-made schema.

    Args:
        url_or_engine: a database URL (an engine is made and disposed of) or an existing engine.
        script_location: the service's migrations folder (or ``package:folder``).
        version_table: ``alembic_version_<service>`` (see ``version_table_for``).
        revision: the target revision.

    Returns:
        The revision the database is at afterwards.

    Raises:
        errors.InvalidInput: bad URL, migrations folder or version table name.
        errors.Unavailable: the database cannot be reached.
        errors.FailedPrecondition: Alembic refused (e.g. the database is at a revision these
            migrations do not know: it was migrated by a newer release).
    """
    cfg = alembic_config(script_location, version_table)
    owned = not isinstance(url_or_engine, Engine)
    engine = url_or_engine if isinstance(url_or_engine, Engine) else create_db_engine(url_or_engine)
    try:
        with engine.connect() as connection:
            connection.execution_options(**{SQLITE_BEGIN_IMMEDIATE: True})
            with connection.begin():
                _lock_for_migration(connection, version_table)
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, revision)
        return current_revision(engine, version_table)
    except (OperationalError, InterfaceError) as exc:
        raise unavailable(engine.url, exc) from exc
    except CommandError as exc:
        raise errors.FailedPrecondition(
            f"cannot migrate {redact_url(engine.url)} with {script_location} "
            f"(version table {version_table}): {exc}",
            reason="MIGRATION_REFUSED",
        ) from exc
    finally:
        if owned:
            engine.dispose()


def current_revision(engine: Engine, version_table: str) -> str | None:
    """Return the revision recorded in ``version_table``, or None before the first migration."""
    _check_version_table(version_table)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": version_table})
        return context.get_current_revision()


def _lock_for_migration(connection: Connection, version_table: str) -> None:
    if connection.dialect.name == "postgresql":
        key = zlib.crc32(version_table.encode())
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _check_version_table(version_table: str) -> None:
    if not _VERSION_TABLE.match(version_table):
        raise errors.InvalidInput.field_error(
            "version_table",
            f"{echo(version_table)} is not alembic_version_<service> (lower case letters, digits, _)",
        )


def _check_script_location(script_location: str | Path) -> str:
    location = str(script_location)
    is_package_resource = ":" in location and not Path(location).exists()
    if not is_package_resource and not (Path(location) / "env.py").is_file():
        raise errors.InvalidInput.field_error(
            "script_location",
            f"{location} is not an Alembic migrations folder (no env.py): "
            "pass the service's migrations/ folder",
        )
    return location
