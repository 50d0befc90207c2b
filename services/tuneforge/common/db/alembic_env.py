"""The body of every service's ``migrations/env.py``.

A service's ``env.py`` is only::

    from tuneforge.common.db import alembic_env
    from tuneforge.datasets.adapters.tables import metadata

    alembic_env.run(metadata)

The database and the version table come from the Alembic config's ``attributes`` (set by
``tuneforge.common.db.run_migrations`` / ``alembic_config``): ``connection`` (an open connection
inside a transaction), else ``url``; and ``version_table``. From the ``alembic`` command line
they come from the ini file's ``sqlalchemy.url`` and ``version_table`` options, else from the
``TUNEFORGE_DATABASE_URL`` environment variable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from alembic import context
from sqlalchemy import Connection, MetaData
from sqlalchemy.engine import URL

from tuneforge.common import errors
from tuneforge.common.db.engine import DATABASE_URL_SETTING, create_db_engine, parse_database_url

Metadata = MetaData | Sequence[MetaData] | None


def run(target_metadata: Metadata) -> None:
    """Run the migrations Alembic asked for, online or offline (``alembic upgrade --sql``).

    Args:
        target_metadata: the service's ``MetaData`` (used by ``--autogenerate``).

    Raises:
        errors.InvalidInput: no version table or database URL is configured.
    """
    config = context.config
    version_table = config.attributes.get("version_table") or config.get_main_option("version_table")
    if not version_table:
        raise errors.InvalidInput.field_error(
            "version_table",
            "not set: call run_migrations()/alembic_config(), or add "
            "version_table = alembic_version_<service> to alembic.ini",
        )
    options = {"target_metadata": target_metadata, "version_table": version_table}
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_online(connection, options)
    elif context.is_offline_mode():
        _run_offline(_configured_url(), options)
    else:
        engine = create_db_engine(_configured_url())
        try:
            with engine.begin() as connection:
                _run_online(connection, options)
        finally:
            engine.dispose()


def _run_online(connection: Connection, options: dict[str, Any]) -> None:
    context.configure(
        connection=connection,
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=_include_object,
        **options,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_offline(url: str | URL, options: dict[str, Any]) -> None:
    parsed = parse_database_url(url)
    context.configure(
        url=parsed,
        literal_binds=True,
        render_as_batch=parsed.drivername.startswith("sqlite"),
        dialect_opts={"paramstyle": "named"},
        **options,
    )
    with context.begin_transaction():
        context.run_migrations()


def _configured_url() -> str | URL:
    config = context.config
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    url = url or os.environ.get(DATABASE_URL_SETTING)
    if not url:
        raise errors.InvalidInput.field_error(
            DATABASE_URL_SETTING, "not set: export it or pass url= to alembic_config()"
        )
    return url  # a URL object stays one: str(URL) would hide (lose) its password


def _include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    # Services share one database: a table that exists there but not in this service's metadata
    # belongs to another service (or is a version table), so autogenerate must not drop it.
    # Dropping one of this service's own tables is therefore written by hand.
    return not (type_ == "table" and reflected and compare_to is None)
