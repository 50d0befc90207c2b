"""The metadata store every service uses: SQLAlchemy 2 engines, units of work, Alembic upgrades.

One setting, ``TUNEFORGE_DATABASE_URL``: ``sqlite:///<path>`` (embedded default, a laptop) or
``postgresql+psycopg://<user>:<password>@<host>:<port>/<database>`` (a cluster). Services may
share one database: each keeps its own migrations folder and its own version table
``alembic_version_<service>``.

Wiring in a service's ``app.py``::

    from tuneforge.common import db

    engine = db.create_db_engine(settings.database_url)          # fails fast: Unavailable
    db.run_migrations(engine, MIGRATIONS_DIR, db.version_table_for("datasets"))
    sessions = db.make_sessionmaker(engine)
    repository = SqlDatasetRepository(sessions)                  # adapters/ uses session_scope

    with db.session_scope(sessions) as session:                  # commit, or rollback on error
        session.execute(...)

Tables (``<service>/adapters/tables.py``): one ``MetaData`` per service, no shared ``Base``::

    metadata = db.new_metadata()                                  # NAMING_CONVENTION applied
    jobs = Table("jobs", metadata,
                 Column("id", String(36), primary_key=True),
                 Column("tenant", String(63), nullable=False, index=True),
                 Column("created_at", db.TZDateTime(), nullable=False, default=db.utcnow))

Migrations (``<service>/migrations/``): ``env.py`` is exactly these lines, copy them::

    from tuneforge.common.db import alembic_env
    from tuneforge.datasets.adapters.tables import metadata

    alembic_env.run(metadata)

plus ``script.py.mako`` (Alembic's default template) and ``versions/``. To write a revision::

    from alembic import command
    cfg = db.alembic_config(MIGRATIONS_DIR, "alembic_version_datasets", url="sqlite:///.cache/dev.db")
    command.revision(cfg, message="add dataset tags", autogenerate=True)

Autogenerate ignores tables not in the service's metadata (other services' tables in a shared
database), so a dropped table is written by hand. On SQLite migrations run in batch mode.

URLs in messages and logs go through ``redact_url``: passwords never appear.
"""

from tuneforge.common.db.engine import (
    ACCEPTED_FORMS,
    DATABASE_URL_SETTING,
    check_connection,
    create_db_engine,
    parse_database_url,
    redact_url,
)
from tuneforge.common.db.migrations import (
    alembic_config,
    current_revision,
    run_migrations,
    version_table_for,
)
from tuneforge.common.db.session import make_sessionmaker, read_scope, session_scope
from tuneforge.common.db.types import NAMING_CONVENTION, TZDateTime, new_metadata, utcnow

__all__ = [
    "ACCEPTED_FORMS",
    "DATABASE_URL_SETTING",
    "NAMING_CONVENTION",
    "TZDateTime",
    "alembic_config",
    "check_connection",
    "create_db_engine",
    "current_revision",
    "make_sessionmaker",
    "new_metadata",
    "parse_database_url",
    "read_scope",
    "redact_url",
    "run_migrations",
    "session_scope",
    "utcnow",
    "version_table_for",
]
