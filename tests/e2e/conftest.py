"""Fixtures of the e2e tests: the cluster they run against (a kubeconfig, see tests/e2e/cluster.py)."""

from __future__ import annotations

import pytest

from tests.e2e.cluster import Kube


@pytest.fixture(scope="session")
def kube() -> Kube:
    """kubectl and helm bound to TUNEFORGE_E2E_KUBECONFIG; skips, saying what to set, without one.

    A kubeconfig that is given but whose server does not answer fails the test: a cluster was meant.
    """
    found, why = Kube.from_env()
    if found is None:
        pytest.skip(why)
    version = found.kubectl("version", "-o", "json", check=False, timeout=30)
    assert version.returncode == 0, f"the cluster of {found.kubeconfig} does not answer:\n{version.stderr}"
    return found
