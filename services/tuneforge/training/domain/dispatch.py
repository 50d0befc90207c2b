"""Which queued job a replica starts next: priorities, per-tenant quotas, a cluster cap, fair share.

Pure policy (no I/O): ``decide`` gets the jobs that may start (QUEUED, or RUNNING under an expired
lease) and what runs now under live leases, and returns the job to claim plus why each other job
waits. The repository calls it inside the claim transaction, under a lock every replica takes, so
quotas hold across replicas.

The order, in the spirit of Kubernetes' and Slurm's fair-share schedulers:

1. A job whose tenant is at a quota (running jobs, workers, GPUs) or that would pass the cluster
   cap waits, QUEUED, with a ``queue_reason`` naming the quota and the setting; a job that can
   never fit its tenant's quota says so (cancel it, or raise the quota).
2. Among tenants with a job that fits, the tenant using the least of its share goes first: fewest
   running workers divided by its ``share`` (then fewest running jobs per share).
3. Within that tenant, and between tenants tied on usage: higher ``priority`` first, then the
   oldest job (then the id, so the order is total).

A smaller job of a tenant may pass its own larger one that does not fit yet (backfill), so one big
job never idles a tenant's quota.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tuneforge.common.errors import FieldViolation, InvalidInput

PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
QUOTAS_SETTING = "TUNEFORGE_TRAIN_TENANT_QUOTAS"
CAP_SETTING = "TUNEFORGE_TRAIN_MAX_RUNNING_JOBS_TOTAL"
DEFAULT_KEY = "*"


@dataclass(frozen=True)
class TenantQuota:
    """What one tenant may use at once (None: no limit) and its weight in fair sharing."""

    max_running_jobs: int | None = None
    max_workers: int | None = None
    max_gpus: int | None = None
    share: float = 1.0


@dataclass(frozen=True)
class Quotas:
    """Every tenant's quota (``default`` for tenants not named) and the cluster-wide cap (0: none)."""

    default: TenantQuota = field(default_factory=TenantQuota)
    tenants: Mapping[str, TenantQuota] = field(default_factory=dict)
    max_running_jobs: int = 0

    def of(self, tenant: str) -> TenantQuota:
        """The quota of ``tenant``."""
        return self.tenants.get(tenant, self.default)


@dataclass(frozen=True)
class Candidate:
    """A job that may start: its tenant, priority, age, size and the reason it was last given."""

    job_id: str
    tenant: str
    priority: int
    created_at: datetime
    workers: int = 1
    gpus: int = 0
    queue_reason: str = ""


@dataclass(frozen=True)
class Running:
    """A job running under a live lease (what it uses of its tenant's quota)."""

    tenant: str
    workers: int = 1
    gpus: int = 0


@dataclass(frozen=True)
class Decision:
    """The job to claim (None: none may start now) and the new ``queue_reason`` of jobs whose reason
    changed (only non-empty reasons: a reason is cleared when its job is claimed)."""

    job_id: str | None
    reasons: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Use:
    jobs: int = 0
    workers: int = 0
    gpus: int = 0


def _usage(running: Iterable[Running]) -> dict[str, _Use]:
    use: dict[str, _Use] = {}
    for r in running:
        u = use.setdefault(r.tenant, _Use())
        u.jobs, u.workers, u.gpus = u.jobs + 1, u.workers + r.workers, u.gpus + r.gpus
    return use


def _blocked(c: Candidate, quota: TenantQuota, use: _Use) -> str:
    """Why ``c`` cannot start under its tenant's quota now ("" when it can)."""
    limits = (("workers", quota.max_workers, c.workers, use.workers), ("GPUs", quota.max_gpus, c.gpus, use.gpus))
    for what, limit, need, _used in limits:
        if limit is not None and need > limit:
            return (f"the job needs {need} {what} but tenant {c.tenant!r} may use at most {limit} at once "
                    f"({QUOTAS_SETTING} max_{what.lower()}): it cannot start; cancel it and ask for fewer, or "
                    "ask the operator to raise the quota")
    if quota.max_running_jobs is not None and use.jobs >= quota.max_running_jobs:
        return (f"waiting for tenant quota: {c.tenant!r} runs its maximum of {quota.max_running_jobs} jobs at "
                f"once ({QUOTAS_SETTING} max_running_jobs)")
    for what, limit, need, used in limits:
        if limit is not None and used + need > limit:
            return (f"waiting for tenant quota: the job needs {need} {what} and {c.tenant!r} may use "
                    f"{limit} at once ({QUOTAS_SETTING} max_{what.lower()})")
    return ""


def _cap_reason(cap: int) -> str:
    return f"waiting for the cluster: it runs its maximum of {cap} jobs at once ({CAP_SETTING})"


def _order(c: Candidate) -> tuple[int, datetime, str]:
    return (-c.priority, c.created_at, c.job_id)


def decide(candidates: Iterable[Candidate], running: Iterable[Running], quotas: Quotas) -> Decision:
    """The next job to claim and the changed reasons of the jobs that wait (see the module docstring)."""
    pending = sorted(candidates, key=_order)
    running = list(running)
    use = _usage(running)
    reasons: dict[str, str] = {}
    fits: list[Candidate] = []
    for c in pending:
        why = _blocked(c, quotas.of(c.tenant), use.get(c.tenant, _Use()))
        if why:
            reasons[c.job_id] = why
        else:
            fits.append(c)
    chosen = None
    if fits and quotas.max_running_jobs and len(running) >= quotas.max_running_jobs:
        reasons.update((c.job_id, _cap_reason(quotas.max_running_jobs)) for c in fits)
    elif fits:
        def standing(c: Candidate) -> tuple[float, float, int, datetime, str]:
            u, share = use.get(c.tenant, _Use()), quotas.of(c.tenant).share
            return (u.workers / share, u.jobs / share, *_order(c))
        chosen = min(fits, key=standing).job_id
    stored = {c.job_id: c.queue_reason for c in pending}
    changed = {job_id: why for job_id, why in reasons.items() if why != stored[job_id]}
    return Decision(chosen, changed)


# --------------------------------------------------------------------------- settings

_QUOTA_KEYS = {"max_running_jobs", "max_workers", "max_gpus", "share"}


def _quota(name: str, doc: Any, problems: list[FieldViolation]) -> TenantQuota:
    where = f"{QUOTAS_SETTING}[{name}]"
    if not isinstance(doc, dict):
        problems.append(FieldViolation(where, 'must be an object such as {"max_running_jobs": 2, "max_workers": 8}'))
        return TenantQuota()
    for key in sorted(set(doc) - _QUOTA_KEYS):
        problems.append(FieldViolation(f"{where}.{key}", f"is not a quota: use {', '.join(sorted(_QUOTA_KEYS))}"))
    values: dict[str, Any] = {}
    for key in ("max_running_jobs", "max_workers", "max_gpus"):
        value = doc.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(FieldViolation(f"{where}.{key}", "must be a whole number >= 0 (leave it out for no limit)"))
        else:
            values[key] = value
    share = doc.get("share", 1.0)
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1e6:
        problems.append(FieldViolation(f"{where}.share", "must be a number > 0 (a tenant's weight in fair sharing, "
                                       "default 1)"))
    else:
        values["share"] = float(share)
    return TenantQuota(**values)


def parse_quotas(text: str, max_running_jobs_total: int = 0) -> Quotas:
    """Quotas from the setting: JSON (``{"*": {...default...}, "acme": {"max_running_jobs": 2, ...}}``) or
    the path of a file holding it; "" means no per-tenant limits (fair sharing still applies).

    Raises:
        InvalidInput: every problem at once, naming the setting, the tenant and the key.
    """
    text = text.strip()
    if not text:
        return Quotas(max_running_jobs=max_running_jobs_total)
    if not text.startswith("{"):
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise InvalidInput.field_error(QUOTAS_SETTING, f"is neither JSON nor a readable file ({exc.strerror}): "
                                           'set it to JSON such as {"*": {"max_running_jobs": 2}} or a file path') from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InvalidInput.field_error(QUOTAS_SETTING, f"is not valid JSON ({exc}): e.g. "
                                       '{"*": {"max_running_jobs": 2}, "acme": {"max_workers": 8, "share": 2}}') from None
    if not isinstance(doc, dict):
        raise InvalidInput.field_error(QUOTAS_SETTING, "must be a JSON object of tenant -> quota ('*' for the default)")
    problems: list[FieldViolation] = []
    quotas = {str(name): _quota(str(name), value, problems) for name, value in doc.items()}
    if problems:
        raise InvalidInput.of(problems, what=QUOTAS_SETTING)
    default = quotas.pop(DEFAULT_KEY, TenantQuota())
    return Quotas(default, quotas, max_running_jobs_total)
