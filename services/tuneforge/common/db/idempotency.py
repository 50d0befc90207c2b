"""SQL storage of idempotency keys (``tuneforge.common.idempotency``), one table per service.

``idempotency_table(metadata, "ds_idempotency_keys")`` declares it in a service's tables module;
``create_idempotency_table(op, name)`` creates it in that service's migration.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table, delete, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.common.db.session import session_scope
from tuneforge.common.db.types import TZDateTime, utcnow
from tuneforge.common.idempotency import KeyRecord, KeyState


def _columns() -> list[Any]:
    return [Column("tenant", String(63), nullable=False), Column("rpc", String(128), nullable=False),
            Column("key", String(256), nullable=False), Column("digest", String(64), nullable=False),
            Column("state", String(16), nullable=False), Column("result_id", String(128), nullable=False),
            Column("updated_at", TZDateTime(), nullable=False)]


def idempotency_table(metadata: MetaData, name: str) -> Table:
    """The keys table of a service (primary key: tenant, rpc, key)."""
    return Table(name, metadata, *_columns(), PrimaryKeyConstraint("tenant", "rpc", "key"))


def create_idempotency_table(op: Any, name: str) -> None:
    """Create the keys table in an Alembic migration (``op`` is ``alembic.op``)."""
    op.create_table(name, *_columns(), PrimaryKeyConstraint("tenant", "rpc", "key", name=f"pk_{name}"))


class SqlIdempotencyStore:
    """``IdempotencyStore`` on a service's table; every change is one short transaction."""

    def __init__(self, sessions: sessionmaker[Session], table: Table) -> None:
        self._sessions = sessions
        self._t = table

    def _where(self, tenant: str, rpc: str, key: str) -> Any:
        c = self._t.c
        return (c.tenant == tenant) & (c.rpc == rpc) & (c.key == key)

    def claim(self, tenant: str, rpc: str, key: str, digest: str) -> KeyRecord | None:
        """Insert the key as PENDING; the existing record if another request holds it."""
        try:
            with session_scope(self._sessions) as s:
                s.execute(insert(self._t).values(tenant=tenant, rpc=rpc, key=key, digest=digest,
                                                 state=KeyState.PENDING.value, result_id="", updated_at=utcnow()))
            return None
        except IntegrityError:
            pass
        with session_scope(self._sessions) as s:
            row = s.execute(select(self._t).where(self._where(tenant, rpc, key))).first()
        if row is None:  # released meanwhile: try again
            return self.claim(tenant, rpc, key, digest)
        return KeyRecord(row.digest, KeyState(row.state), row.result_id)

    def finish(self, tenant: str, rpc: str, key: str, result_id: str) -> None:
        """Mark the key DONE with its result."""
        with session_scope(self._sessions) as s:
            s.execute(update(self._t).where(self._where(tenant, rpc, key))
                      .values(state=KeyState.DONE.value, result_id=result_id, updated_at=utcnow()))

    def release(self, tenant: str, rpc: str, key: str) -> None:
        """Forget the key."""
        with session_scope(self._sessions) as s:
            s.execute(delete(self._t).where(self._where(tenant, rpc, key)))

    def take_over(self, tenant: str, rpc: str, key: str, seen: KeyRecord) -> bool:
        """Back to PENDING if the record is still ``seen`` (compare-and-set)."""
        c = self._t.c
        with session_scope(self._sessions) as s:
            done = s.execute(update(self._t).where(self._where(tenant, rpc, key), c.state == seen.state.value,
                                                   c.result_id == seen.result_id, c.digest == seen.digest)
                             .values(state=KeyState.PENDING.value, result_id="", updated_at=utcnow()))
        return bool(cast(CursorResult[Any], done).rowcount)

    def clear_pending(self) -> int:
        """Forget every PENDING key (their requests died with the process that held them)."""
        with session_scope(self._sessions) as s:
            done = s.execute(delete(self._t).where(self._t.c.state == KeyState.PENDING.value))
        return int(cast(CursorResult[Any], done).rowcount or 0)
