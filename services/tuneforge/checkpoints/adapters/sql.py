"""``CheckpointRepository`` on SQLAlchemy 2 (SQLite or PostgreSQL); every query filters on tenant."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, and_, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.checkpoints.adapters.tables import (
    STATE_COMMITTED,
    STATE_DELETING,
    alias_history,
    aliases,
    checkpoints,
    pins,
    policies,
)
from tuneforge.checkpoints.domain.model import Alias, AliasMove, Manifest, Pin, RetentionPolicy
from tuneforge.common.db import read_scope, session_scope
from tuneforge.common.errors import NotFound
from tuneforge.common.public_text import echo

_GET_MANIFEST = select(checkpoints.c.manifest).where(
    checkpoints.c.tenant == bindparam("tenant"), checkpoints.c.id == bindparam("checkpoint_id"),
    checkpoints.c.state == STATE_COMMITTED)
_ALIAS_NAMES = select(aliases.c.name).where(aliases.c.tenant == bindparam("tenant"),
                                            aliases.c.checkpoint_id == bindparam("checkpoint_id"))


class SqlCheckpointRepository:
    """Checkpoints, aliases with history, policies and pins in the service's SQL tables.

    Args:
        sessions: the factory from ``tuneforge.common.db.make_sessionmaker``.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    # ---- checkpoints -------------------------------------------------------------------------

    def insert_or_get(self, manifest: Manifest) -> Manifest:
        """Insert; on a (tenant, job, step) conflict return the row already there."""
        row = {
            "id": manifest.checkpoint_id,
            "tenant": manifest.tenant,
            "job_id": manifest.job_id,
            "step": manifest.step,
            "state": STATE_COMMITTED,
            "digest": manifest.digest,
            "prefix": manifest.draft.prefix,
            "manifest": manifest.to_document(),
            "created_at": manifest.create_time,
        }
        try:
            with session_scope(self._sessions) as session:
                session.execute(insert(checkpoints).values(**row))
            return manifest
        except SqlIntegrityError:
            with session_scope(self._sessions) as session:
                found = session.execute(select(checkpoints.c.manifest).where(
                    checkpoints.c.tenant == manifest.tenant,
                    checkpoints.c.job_id == manifest.job_id,
                    checkpoints.c.step == manifest.step,
                )).scalar_one()
            return Manifest.from_document(found)

    def get(self, tenant: str, checkpoint_id: str) -> Manifest | None:
        """A committed checkpoint with its aliases, or None (absent, deleting, other tenant)."""
        ids = {"tenant": tenant, "checkpoint_id": checkpoint_id}
        with read_scope(self._sessions) as c:  # GetManifest's read: Core, prebuilt statements
            doc = c.execute(_GET_MANIFEST, ids).scalar_one_or_none()
            if doc is None:
                return None
            names = c.execute(_ALIAS_NAMES, ids).scalars().all()
        return Manifest.from_document(doc).with_aliases(tuple(names))

    def list_job(self, tenant: str, job_id: str) -> list[Manifest]:
        """Committed checkpoints of a job by step, with aliases."""
        with session_scope(self._sessions, read_only=True) as session:
            docs = session.execute(select(checkpoints.c.manifest).where(
                checkpoints.c.tenant == tenant,
                checkpoints.c.job_id == job_id,
                checkpoints.c.state == STATE_COMMITTED,
            ).order_by(checkpoints.c.step)).scalars().all()
            pairs = session.execute(select(aliases.c.checkpoint_id, aliases.c.name).where(
                aliases.c.tenant == tenant, aliases.c.job_id == job_id)).all()
        by_id: dict[str, list[str]] = defaultdict(list)
        for checkpoint_id, name in pairs:
            by_id[checkpoint_id].append(name)
        out = [Manifest.from_document(d) for d in docs]
        return [m.with_aliases(tuple(by_id.get(m.checkpoint_id, ()))) for m in out]

    def begin_delete(self, tenant: str, checkpoint_id: str, *, force: bool = False) -> list[str]:
        """Hide the checkpoint; returns the references that refused it (empty: it is now hidden).

        Without ``force`` the reference check and the hiding are one conditional UPDATE (no pin or
        alias may exist), so a pin or alias that lands between a caller's check and this call
        blocks the deletion instead of being dropped. With ``force`` the aliases and pins pointing
        at the checkpoint are dropped with it (alias history stays).

        Raises:
            NotFound: no committed checkpoint ``checkpoint_id`` (absent, or being deleted).
        """
        target = and_(checkpoints.c.tenant == tenant, checkpoints.c.id == checkpoint_id,
                      checkpoints.c.state == STATE_COMMITTED)
        with session_scope(self._sessions) as session:
            # Lock the row first (PostgreSQL): add_pin and move_alias lock it too, so they either
            # finish before the UPDATE below (whose fresh snapshot then sees them) or wait and find
            # the checkpoint hidden.
            _lock_committed(session, tenant, checkpoint_id)
            hide = update(checkpoints).where(target)
            if not force:
                hide = hide.where(~_pinned(tenant, checkpoint_id), ~_aliased(tenant, checkpoint_id))
            if not _rowcount(session.execute(hide.values(state=STATE_DELETING))):
                return self._references(session, tenant, checkpoint_id)
            session.execute(delete(aliases).where(
                aliases.c.tenant == tenant, aliases.c.checkpoint_id == checkpoint_id))
            session.execute(delete(pins).where(pins.c.tenant == tenant, pins.c.checkpoint_id == checkpoint_id))
        return []

    @staticmethod
    def _references(session: Session, tenant: str, checkpoint_id: str) -> list[str]:
        names = session.execute(select(aliases.c.job_id, aliases.c.name).where(
            aliases.c.tenant == tenant, aliases.c.checkpoint_id == checkpoint_id)
            .order_by(aliases.c.job_id, aliases.c.name)).all()
        holders = session.execute(select(pins.c.holder).where(
            pins.c.tenant == tenant, pins.c.checkpoint_id == checkpoint_id).order_by(pins.c.holder)).scalars().all()
        return [f"alias {echo(n)}" for _, n in names] + [f"pinned by {echo(h)}" for h in holders]

    def finish_delete(self, tenant: str, checkpoint_id: str) -> None:
        """Forget the row of a checkpoint whose files are gone."""
        with session_scope(self._sessions) as session:
            session.execute(delete(checkpoints).where(
                checkpoints.c.tenant == tenant, checkpoints.c.id == checkpoint_id))

    def list_prefixes(self, tenant: str) -> list[tuple[str, str]]:
        """(prefix, state) of every checkpoint row of a tenant, deleting ones included (for GC)."""
        with session_scope(self._sessions, read_only=True) as session:
            rows = session.execute(select(checkpoints.c.prefix, checkpoints.c.state).where(
                checkpoints.c.tenant == tenant)).all()
        return [(p, s) for p, s in rows]

    def list_deleting(self, tenant: str) -> list[Manifest]:
        """Checkpoints whose deletion was interrupted (hidden rows), to be finished by GC."""
        with session_scope(self._sessions, read_only=True) as session:
            docs = session.execute(select(checkpoints.c.manifest).where(
                checkpoints.c.tenant == tenant, checkpoints.c.state == STATE_DELETING)).scalars().all()
        return [Manifest.from_document(d) for d in docs]

    # ---- aliases -----------------------------------------------------------------------------

    def move_alias(self, tenant: str, job_id: str, name: str, checkpoint_id: str, when: datetime) -> Alias:
        """Upsert the alias row and append to its history in one transaction.

        Raises:
            NotFound: the checkpoint is absent or being deleted (checked under the row's lock).
        """
        key = and_(aliases.c.tenant == tenant, aliases.c.job_id == job_id, aliases.c.name == name)
        with session_scope(self._sessions) as session:
            _lock_committed(session, tenant, checkpoint_id)
            moved = _rowcount(session.execute(update(aliases).where(key).values(
                checkpoint_id=checkpoint_id, updated_at=when)))
            if not moved:
                session.execute(insert(aliases).values(
                    tenant=tenant, job_id=job_id, name=name, checkpoint_id=checkpoint_id, updated_at=when))
            session.execute(insert(alias_history).values(
                tenant=tenant, job_id=job_id, name=name, checkpoint_id=checkpoint_id, set_at=when))
        alias = self.get_alias(tenant, job_id, name)
        assert alias is not None  # just written in this tenant
        return alias

    def get_alias(self, tenant: str, job_id: str, name: str) -> Alias | None:
        """One alias with its history, newest first."""
        found = [a for a in self.list_aliases(tenant, job_id) if a.name == name]
        return found[0] if found else None

    def list_aliases(self, tenant: str, job_id: str) -> list[Alias]:
        """The current aliases of a job, by name, each with its history newest first."""
        with session_scope(self._sessions, read_only=True) as session:
            current = session.execute(select(aliases.c.name, aliases.c.checkpoint_id).where(
                aliases.c.tenant == tenant, aliases.c.job_id == job_id).order_by(aliases.c.name)).all()
            moves = session.execute(select(
                alias_history.c.name, alias_history.c.checkpoint_id, alias_history.c.set_at,
            ).where(alias_history.c.tenant == tenant, alias_history.c.job_id == job_id)
             .order_by(alias_history.c.id.desc())).all()
        history: dict[str, list[AliasMove]] = defaultdict(list)
        for name, checkpoint_id, set_at in moves:
            history[name].append(AliasMove(checkpoint_id=checkpoint_id, time=set_at))
        return [Alias(job_id=job_id, name=n, checkpoint_id=c, history=tuple(history[n])) for n, c in current]

    # ---- policies and pins -------------------------------------------------------------------

    def get_policy(self, tenant: str, job_id: str) -> RetentionPolicy | None:
        """The job's policy, or None."""
        with session_scope(self._sessions, read_only=True) as session:
            row = session.execute(select(policies).where(
                policies.c.tenant == tenant, policies.c.job_id == job_id)).mappings().one_or_none()
        if row is None:
            return None
        return RetentionPolicy(keep_best_n=row["keep_best_n"], keep_latest_m=row["keep_latest_m"],
                               metric=row["metric"], greater_is_better=row["greater_is_better"])

    def set_policy(self, tenant: str, job_id: str, policy: RetentionPolicy) -> None:
        """Replace the job's policy."""
        values: dict[str, Any] = {"keep_best_n": policy.keep_best_n, "keep_latest_m": policy.keep_latest_m,
                                  "metric": policy.metric, "greater_is_better": policy.greater_is_better}
        with session_scope(self._sessions) as session:
            updated = _rowcount(session.execute(update(policies).where(
                policies.c.tenant == tenant, policies.c.job_id == job_id).values(**values)))
            if not updated:
                session.execute(insert(policies).values(tenant=tenant, job_id=job_id, **values))

    def add_pin(self, tenant: str, pin: Pin) -> None:
        """Record a pin (no-op when it exists) on a committed checkpoint.

        Raises:
            NotFound: the checkpoint is absent or being deleted (checked under the row's lock).
        """
        try:
            with session_scope(self._sessions) as session:
                _lock_committed(session, tenant, pin.checkpoint_id)
                session.execute(insert(pins).values(tenant=tenant, checkpoint_id=pin.checkpoint_id,
                                                    holder=pin.holder, created_at=pin.create_time))
        except SqlIntegrityError:
            pass  # already pinned by this holder: pinning is idempotent

    def remove_pin(self, tenant: str, checkpoint_id: str, holder: str) -> bool:
        """Forget a pin; returns whether it existed."""
        with session_scope(self._sessions) as session:
            return bool(_rowcount(session.execute(delete(pins).where(
                pins.c.tenant == tenant, pins.c.checkpoint_id == checkpoint_id, pins.c.holder == holder,
            ))))

    def list_pins(self, tenant: str, checkpoint_ids: Sequence[str]) -> list[Pin]:
        """Pins on any of ``checkpoint_ids``."""
        if not checkpoint_ids:
            return []
        with session_scope(self._sessions, read_only=True) as session:
            rows = session.execute(select(pins.c.checkpoint_id, pins.c.holder, pins.c.created_at).where(
                pins.c.tenant == tenant, pins.c.checkpoint_id.in_(list(checkpoint_ids)))).all()
        return [Pin(checkpoint_id=c, holder=h, create_time=t) for c, h, t in rows]


def _pinned(tenant: str, checkpoint_id: str) -> Any:
    return select(pins.c.holder).where(pins.c.tenant == tenant, pins.c.checkpoint_id == checkpoint_id).exists()


def _aliased(tenant: str, checkpoint_id: str) -> Any:
    return select(aliases.c.name).where(aliases.c.tenant == tenant, aliases.c.checkpoint_id == checkpoint_id).exists()


def _lock_committed(session: Session, tenant: str, checkpoint_id: str) -> None:
    """Lock a committed checkpoint's row for the transaction (a no-op lock on SQLite), or ``NotFound``."""
    found = session.execute(select(checkpoints.c.id).where(
        checkpoints.c.tenant == tenant, checkpoints.c.id == checkpoint_id, checkpoints.c.state == STATE_COMMITTED,
    ).with_for_update()).first()
    if found is None:
        raise NotFound(f"checkpoint {echo(checkpoint_id)} not found or being deleted: list the job's checkpoints")


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)
