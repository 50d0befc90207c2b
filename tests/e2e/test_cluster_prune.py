"""`make cluster-prune-images` frees what it removes from the local cluster's containerd.

The CRI plugin keeps every image twice: under its name and under its ID (`sha256:<config digest>`).
A prune that removes only the name frees nothing; this test plants a stale tuneforge image, prunes
everything else kept, and checks that the image's name, its ID reference and its layer are gone
while every other image stays. Only for this machine's cluster (`make cluster-up`): kind keeps its
containerd inside a container.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.e2e.cluster import ROOT, Kube

pytestmark = pytest.mark.e2e

PLANTED = "localhost/tuneforge-prunetest:stale"


def _ctr(sock: Path, *args: str) -> str:
    proc = subprocess.run(["ctr", "--address", str(sock), "-n", "k8s.io", *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"ctr {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def _refs(sock: Path) -> dict[str, str]:
    """Reference -> manifest digest, as `ctr images ls` lists them."""
    lines = _ctr(sock, "images", "ls").splitlines()[1:]
    return {cols[0]: cols[2] for cols in (line.split() for line in lines) if len(cols) >= 3}


def test_prune_removes_a_stale_image_by_name_and_by_id_and_frees_its_layer(kube: Kube, tmp_path: Path) -> None:
    sock = kube.kubeconfig.parent / "containerd" / "containerd.sock"
    if not sock.exists():
        pytest.skip(f"no local containerd at {sock}: this cluster is not the one `make cluster-up` starts")
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "payload").write_bytes(os.urandom(256 * 1024))  # a layer no other image shares
    archive = tmp_path / "stale.tar"
    subprocess.run([str(ROOT / "deploy" / "cluster" / "image-archive.sh"), str(archive), PLANTED, str(rootfs),
                    "/payload"], check=True, timeout=60)
    with tarfile.open(archive) as tar:  # the layer is <sha256 of layer.tar>/layer.tar
        layer = "sha256:" + next(m.name.split("/")[0] for m in tar.getmembers() if m.name.endswith("/layer.tar"))
    _ctr(sock, "images", "import", str(archive))
    assert layer in _ctr(sock, "content", "ls", "-q").split(), "the import did not store the layer"
    planted_digest = _refs(sock)[PLANTED]
    # The CRI plugin adds the ID reference on the import event: wait for it (bounded).
    deadline = time.monotonic() + 120
    while not [r for r, d in _refs(sock).items() if r.startswith("sha256:") and d == planted_digest]:
        assert time.monotonic() < deadline, f"containerd never listed {PLANTED} under its ID: {_refs(sock)}"
        time.sleep(0.5)
    before = _refs(sock)
    keep = sorted(r for r in before if not r.startswith("sha256:") and r != PLANTED)

    env = {**os.environ, "CLUSTER_RUN": str(kube.kubeconfig.parent)}
    proc = subprocess.run([str(ROOT / "deploy" / "cluster" / "prune-images.sh"), *keep], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr

    after = _refs(sock)
    assert PLANTED not in after
    assert planted_digest not in after.values(), f"a reference still holds the planted image: {after}"
    for ref in keep:
        assert ref in after, f"prune removed {ref}, which it was told to keep"
        # The ID reference of every kept image stays too.
        ids = [r for r, d in before.items() if r.startswith("sha256:") and d == before[ref]]
        assert all(i in after for i in ids), f"prune removed the ID reference of kept {ref}"
    content = set(_ctr(sock, "content", "ls", "-q").split())
    assert planted_digest not in content, "the planted image's manifest is still in containerd's content store"
    assert layer not in content, "the planted image's layer was not freed"
