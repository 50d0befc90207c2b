"""The dispatch policy: quotas, the cluster cap, fair share, priority, age, and the quota setting."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tuneforge.common.errors import InvalidInput
from tuneforge.training.domain.dispatch import Candidate, Quotas, Running, TenantQuota, decide, parse_quotas

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _job(job_id: str, tenant: str, *, at: int = 0, priority: int = 0, workers: int = 1, gpus: int = 0,
         reason: str = "") -> Candidate:
    return Candidate(job_id, tenant, priority, T0 + timedelta(seconds=at), workers, gpus, reason)


def test_with_no_quotas_the_oldest_of_the_highest_priority_goes_first() -> None:
    jobs = [_job("a", "acme", at=1), _job("b", "acme", at=0), _job("c", "acme", at=2, priority=5)]
    assert decide(jobs, [], Quotas()).job_id == "c"
    assert decide(jobs[:2], [], Quotas()).job_id == "b"
    assert decide([], [], Quotas()).job_id is None


def test_the_tenant_furthest_below_its_share_goes_first_whatever_the_priorities() -> None:
    jobs = [_job("a1", "a", at=0, priority=100), _job("b1", "b", at=5)]
    running = [Running("a", workers=2)]
    assert decide(jobs, running, Quotas()).job_id == "b1"  # a already uses 2 workers, b none
    # With twice b's share, a's 2 workers count as 1 per share: still more than b's 0.
    assert decide(jobs, running, Quotas(tenants={"a": TenantQuota(share=2)})).job_id == "b1"
    # b runs 3 workers at share 1, a runs 2 at share 4: a is further below its share.
    running_b = [*running, Running("b", workers=3)]
    assert decide(jobs, running_b, Quotas(tenants={"a": TenantQuota(share=4)})).job_id == "a1"


def test_priority_breaks_ties_between_tenants_then_age() -> None:
    jobs = [_job("a1", "a", at=0), _job("b1", "b", at=1, priority=3)]
    assert decide(jobs, [], Quotas()).job_id == "b1"
    assert decide([_job("a1", "a", at=0), _job("b1", "b", at=1)], [], Quotas()).job_id == "a1"


@pytest.mark.parametrize(("quota", "running", "job", "says"), [
    (TenantQuota(max_running_jobs=2), [Running("a"), Running("a")], _job("j", "a"), "maximum of 2 jobs"),
    (TenantQuota(max_workers=4), [Running("a", workers=3)], _job("j", "a", workers=2), "needs 2 workers"),
    (TenantQuota(max_gpus=2), [Running("a", gpus=2)], _job("j", "a", gpus=1), "needs 1 GPUs"),
    (TenantQuota(max_workers=4), [], _job("j", "a", workers=8), "cannot start"),
])
def test_a_job_over_its_tenants_quota_waits_and_says_which_quota(quota: TenantQuota, running: list[Running],
                                                                 job: Candidate, says: str) -> None:
    decision = decide([job], running, Quotas(tenants={"a": quota}))
    assert decision.job_id is None
    assert says in decision.reasons["j"] and "TUNEFORGE_TRAIN_TENANT_QUOTAS" in decision.reasons["j"]


def test_a_blocked_tenant_does_not_block_another_and_a_small_job_backfills() -> None:
    quotas = Quotas(default=TenantQuota(max_workers=4))
    jobs = [_job("big", "a", at=0, workers=4), _job("small", "a", at=1, workers=1), _job("b1", "b", at=2, workers=2)]
    running = [Running("a", workers=2), Running("b", workers=2)]
    decision = decide(jobs, running, quotas)
    assert decision.job_id == "small"  # a and b both use 2 workers: a's older fitting job goes (age)
    assert "big" in decision.reasons and "small" not in decision.reasons


def test_the_cluster_cap_holds_every_job() -> None:
    decision = decide([_job("j", "a"), _job("k", "b")], [Running("c"), Running("c")], Quotas(max_running_jobs=2))
    assert decision.job_id is None
    assert set(decision.reasons) == {"j", "k"} and "TUNEFORGE_TRAIN_MAX_RUNNING_JOBS_TOTAL" in decision.reasons["j"]
    assert decide([_job("j", "a")], [Running("c")], Quotas(max_running_jobs=2)).job_id == "j"


def test_a_reason_is_reported_only_when_it_changes() -> None:
    quotas = Quotas(default=TenantQuota(max_running_jobs=1))
    first = decide([_job("j", "a")], [Running("a")], quotas)
    again = decide([_job("j", "a", reason=first.reasons["j"])], [Running("a")], quotas)
    assert first.reasons and not again.reasons


def test_fair_share_over_many_rounds_interleaves_tenants_up_to_their_quotas() -> None:
    """Three tenants of ten jobs each, 4 slots: claims alternate between tenants; no quota is passed."""
    quotas = Quotas(default=TenantQuota(max_running_jobs=2), max_running_jobs=4)
    queued = [_job(f"{t}{i}", t, at=i * 3 + n) for n, t in enumerate("abc") for i in range(10)]
    running: list[Running] = []
    order = []
    while (chosen := decide(queued, running, quotas).job_id) is not None:
        job = next(j for j in queued if j.job_id == chosen)
        queued.remove(job)
        running.append(Running(job.tenant))
        order.append(chosen)
    assert order == ["a0", "b0", "c0", "a1"]  # the cap of 4; each tenant got a turn before any got a second
    running.pop(0)  # a0 ends: the tenant with the least running (b or c at 1, a at 1) by age: b1
    assert decide(queued, running, quotas).job_id == "b1"


@pytest.mark.parametrize(("text", "field"), [
    ("{", "TUNEFORGE_TRAIN_TENANT_QUOTAS"),
    ("[1]", "TUNEFORGE_TRAIN_TENANT_QUOTAS"),
    ('{"a": 3}', "TUNEFORGE_TRAIN_TENANT_QUOTAS[a]"),
    ('{"a": {"max_jobs": 3}}', "TUNEFORGE_TRAIN_TENANT_QUOTAS[a].max_jobs"),
    ('{"a": {"max_workers": -1}}', "TUNEFORGE_TRAIN_TENANT_QUOTAS[a].max_workers"),
    ('{"a": {"max_gpus": 1.5}}', "TUNEFORGE_TRAIN_TENANT_QUOTAS[a].max_gpus"),
    ('{"*": {"share": 0}}', "TUNEFORGE_TRAIN_TENANT_QUOTAS[*].share"),
    ("/no/such/quotas.json", "TUNEFORGE_TRAIN_TENANT_QUOTAS"),
])
def test_a_bad_quota_setting_names_the_tenant_and_key(text: str, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_quotas(text)
    assert field in [v.field for v in info.value.violations]


def test_quotas_parse_from_json_or_a_file(tmp_path: Path) -> None:
    text = '{"*": {"max_running_jobs": 2}, "acme": {"max_workers": 8, "max_gpus": 4, "share": 2}}'
    path = tmp_path / "quotas.json"
    path.write_text(text)
    for quotas in (parse_quotas(text, 10), parse_quotas(str(path), 10)):
        assert quotas.of("acme") == TenantQuota(None, 8, 4, 2.0)
        assert quotas.of("other") == TenantQuota(max_running_jobs=2) and quotas.max_running_jobs == 10
    assert parse_quotas("") == Quotas()


def test_a_heartbeat_that_cannot_reach_the_database_for_a_whole_ttl_stops_the_run() -> None:
    """Renewals failing (database unreachable) keep the run while the lease may still hold; once a
    full TTL passed without a renewal, another replica may have the job: the run is stopped."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tuneforge.common.errors import Unavailable
    from tuneforge.training.domain.dispatcher import Dispatcher, DispatchSettings
    from tuneforge.training.domain.model import Lease

    class Unreachable:
        def renew(self, lease: Lease, ttl_s: float) -> Lease | None:
            raise Unavailable("database unreachable")

    class Run:
        job_id, ending, lost = "job_1", False, False
        lease = Lease("job_1", "acme", "r1", 1, T0)

        def lose(self) -> None:
            self.lost = True

    dispatcher = Dispatcher(Unreachable(), ThreadPoolExecutor(1), DispatchSettings("r1", lease_ttl_s=30),  # type: ignore[arg-type]
                            launch=lambda job: None, on_reason=lambda *a: None)
    run = Run()
    dispatcher._runs["job_1"] = run  # type: ignore[assignment]
    dispatcher._renewed["job_1"] = time.monotonic()
    dispatcher.heartbeat_once()
    assert not run.lost  # renewed a moment ago: the lease still holds
    dispatcher._renewed["job_1"] = time.monotonic() - 31
    dispatcher.heartbeat_once()
    assert run.lost


def test_training_settings_refuse_bad_quotas_and_a_heartbeat_too_slow_for_the_lease() -> None:
    from tuneforge.common.settings import load_settings
    from tuneforge.training.settings import TrainingSettings

    base = {"TUNEFORGE_AUTH_DISABLED": "true"}
    for extra, says in [({"TUNEFORGE_TRAIN_TENANT_QUOTAS": '{"acme": {"max_gpu": 1}}'},
                         "TUNEFORGE_TRAIN_TENANT_QUOTAS[acme].max_gpu"),
                        ({"TUNEFORGE_TRAIN_HEARTBEAT_INTERVAL_S": "20"}, "at most a third of TUNEFORGE_TRAIN_LEASE_TTL_S")]:
        with pytest.raises(InvalidInput, match=re.escape(says)):
            load_settings(TrainingSettings, environ={**base, **extra})
    settings = load_settings(TrainingSettings, environ={**base, "TUNEFORGE_TRAIN_TENANT_QUOTAS": '{"*": {"max_gpus": 2}}',
                                                        "TUNEFORGE_TRAIN_MAX_RUNNING_JOBS_TOTAL": "6"})
    assert settings.quotas() == Quotas(TenantQuota(max_gpus=2), {}, 6) and settings.replica_id()
