"""A real Kubernetes cluster for the e2e tests, given by a kubeconfig (never by cluster type).

``TUNEFORGE_E2E_KUBECONFIG`` (else ``KUBECONFIG``) names the cluster: `make cluster-up` writes
``.run/cluster/kubeconfig`` (this machine's one-node Kubernetes), `make kind-test` passes kind's.
kubectl and helm come from ``TUNEFORGE_E2E_KUBECTL`` / ``TUNEFORGE_E2E_HELM``, else a ``bin/``
folder beside the kubeconfig (where `make cluster-up` links them), else PATH.

Services are reached at their pods' addresses when this machine routes to them (the local
cluster's bridge), else through ``kubectl port-forward`` (kind on a laptop).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tuneforge"


def kubeconfig_path() -> Path | None:
    """The kubeconfig the e2e tests run against, or None when none is given."""
    value = os.environ.get("TUNEFORGE_E2E_KUBECONFIG") or os.environ.get("KUBECONFIG", "")
    return Path(value) if value else None


def _tool(name: str, kubeconfig: Path) -> str | None:
    explicit = os.environ.get(f"TUNEFORGE_E2E_{name.upper()}")
    if explicit:
        return explicit
    beside = kubeconfig.parent / "bin" / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


class CommandFailed(AssertionError):
    """A kubectl/helm command failed; the message carries its output."""

    def __init__(self, cmd: list[str], proc: subprocess.CompletedProcess[str]) -> None:
        self.returncode, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        super().__init__(f"{' '.join(cmd[:6])}... exited {proc.returncode}:\n{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}")


@dataclass
class Kube:
    """kubectl and helm bound to one kubeconfig."""

    kubeconfig: Path
    kubectl_bin: str
    helm_bin: str

    @classmethod
    def from_env(cls) -> tuple[Kube | None, str]:
        """The cluster, or None and why not."""
        kc = kubeconfig_path()
        if kc is None:
            return None, ("no cluster: set TUNEFORGE_E2E_KUBECONFIG (`make cluster-up` writes .run/cluster/kubeconfig; "
                          "`make kind-test` sets it for kind)")
        if not kc.exists():
            return None, f"kubeconfig {kc} does not exist (is the cluster up? `make cluster-up`)"
        kubectl, helm = _tool("kubectl", kc), _tool("helm", kc)
        if not kubectl or not helm:
            return None, f"kubectl ({kubectl}) and helm ({helm}) are needed: put them on PATH or beside the kubeconfig in bin/"
        return cls(kc, kubectl, helm), ""

    def _run(self, cmd: list[str], check: bool, timeout: float, stdin: str | None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin, check=False,
                              env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})
        if check and proc.returncode != 0:
            raise CommandFailed(cmd, proc)
        return proc

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120,
                stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster."""
        return self._run([self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args], check, timeout, stdin)

    def helm(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run helm against this cluster."""
        return self._run([self.helm_bin, "--kubeconfig", str(self.kubeconfig), *args], check, timeout, None)

    def get(self, *args: str) -> dict[str, Any]:
        """``kubectl get ... -o json`` as a dict."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def secret(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's decoded data."""
        data = self.get("-n", namespace, "secret", name).get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def has_api(self, group_version: str, kind: str) -> bool:
        """Whether the server serves ``kind`` in ``group_version`` (e.g. a CRD is installed)."""
        proc = self.kubectl("api-resources", f"--api-group={group_version.split('/')[0]}", "-o", "name", check=False)
        return proc.returncode == 0 and any(line.split(".")[0] == kind.lower() + "s" for line in proc.stdout.split())

    def diagnostics(self, namespace: str) -> str:
        """What a failing test prints: pods, events, and the tail of each container's log."""
        parts = [self.kubectl("-n", namespace, "get", "pods,raycluster", "-o", "wide", check=False).stdout,
                 self.kubectl("-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout[-6000:]]
        pods = self.kubectl("-n", namespace, "get", "pods", "-o", "name", check=False).stdout.split()
        for pod in pods:
            logs = self.kubectl("-n", namespace, "logs", pod, "--all-containers", "--tail=40", check=False)
            parts.append(f"--- {pod}\n{(logs.stdout or logs.stderr)[-3000:]}")
        return "\n".join(parts)

    def wait_until(self, what: str, check: Any, timeout_s: float, every_s: float = 2.0) -> Any:
        """Poll ``check()`` until it returns something truthy; fail naming ``what`` after the timeout."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(every_s)
        raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")

    def _endpoint_ips(self, namespace: str, service: str) -> list[str]:
        slices = self.get("-n", namespace, "endpointslices", "-l", f"kubernetes.io/service-name={service}")
        return [a for s in slices["items"] for e in (s.get("endpoints") or [])
                if (e.get("conditions") or {}).get("ready", True) for a in e.get("addresses", [])]

    @contextmanager
    def service_address(self, namespace: str, service: str, port: int, timeout_s: float = 60) -> Iterator[str]:
        """``host:port`` reaching a Service: a ready pod's address when routable, else a port-forward."""
        ips = self.wait_until(f"a ready endpoint of {namespace}/{service}",
                              lambda: self._endpoint_ips(namespace, service), timeout_s)
        if os.environ.get("TUNEFORGE_E2E_CONNECT", "auto") != "port-forward" and _reachable(ips[0], port):
            yield f"{ips[0]}:{port}"
            return
        with self._port_forward(namespace, service, port, timeout_s) as addr:
            yield addr

    @contextmanager
    def _port_forward(self, namespace: str, service: str, port: int, timeout_s: float) -> Iterator[str]:
        proc = subprocess.Popen([self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), "-n", namespace,
                                 "port-forward", f"svc/{service}", f":{port}"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + timeout_s
            assert proc.stdout is not None
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if m := re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line):
                    yield f"127.0.0.1:{m.group(1)}"
                    return
                if not line and proc.poll() is not None:
                    break
            raise RuntimeError(f"port-forward to {namespace}/{service} did not start (exit {proc.poll()})")
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _reachable(host: str, port: int, timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def chart_app_version() -> str:
    """The chart's appVersion: the tag `make images` gives the images."""
    text = (CHART / "Chart.yaml").read_text()
    m = re.search(r'^appVersion:\s*"?([^"\n]+)"?', text, re.M)
    assert m, "Chart.yaml has no appVersion"
    return m.group(1)


def unique_namespace(prefix: str) -> str:
    """A fresh namespace name."""
    return f"{prefix}-{os.urandom(3).hex()}"
