"""`make cluster-prune-images` frees what it removes from the local cluster's containerd, and only that.

The CRI plugin keeps every image twice: under its name and under its ID (`sha256:<config digest>`).
A prune that removes only the name frees nothing. This test plants three images: a stale tuneforge
image (its name, its ID reference and its layer must go), a stale tuneforge image a container uses
(it must stay), and an image known only by its ID that is not one the prune removed (it must stay);
every image it was told to keep stays too. Only for this machine's cluster (`make cluster-up`): kind
keeps its containerd inside a container.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import ROOT, Kube

pytestmark = pytest.mark.e2e

STALE = "localhost/tuneforge-prunetest:stale"
IN_USE = "localhost/tuneforge-prunetest:in-use"
ID_ONLY = "localhost/prunetest-other:1"
CONTAINER = "tf-prunetest"


def _ctr(sock: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["ctr", "--address", str(sock), "-n", "k8s.io", *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 or not check, f"ctr {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def _refs(sock: Path) -> dict[str, str]:
    """Reference -> manifest digest, as `ctr images ls` lists them."""
    lines = _ctr(sock, "images", "ls").splitlines()[1:]
    return {cols[0]: cols[2] for cols in (line.split() for line in lines) if len(cols) >= 3}


def _ids(refs: dict[str, str], digest: str) -> list[str]:
    return [r for r, d in refs.items() if r.startswith("sha256:") and d == digest]


def _plant(sock: Path, tmp_path: Path, name: str) -> tuple[str, str]:
    """Imports a one-layer image no other shares; waits for the CRI's ID reference. (digest, layer)"""
    rootfs = tmp_path / name.replace("/", "_").replace(":", "_")
    rootfs.mkdir()
    (rootfs / "payload").write_bytes(os.urandom(256 * 1024))
    archive = rootfs.with_suffix(".tar")
    subprocess.run([str(ROOT / "deploy" / "cluster" / "image-archive.sh"), str(archive), name, str(rootfs), "/payload"],
                   check=True, timeout=60)
    with tarfile.open(archive) as tar:  # the layer is <sha256 of layer.tar>/layer.tar
        layer = "sha256:" + next(m.name.split("/")[0] for m in tar.getmembers() if m.name.endswith("/layer.tar"))
    _ctr(sock, "images", "import", str(archive))
    digest = _refs(sock)[name]
    PLANTED_DIGESTS.append(digest)
    deadline = time.monotonic() + 120  # the CRI plugin adds the ID reference on the import event
    while not _ids(_refs(sock), digest):
        assert time.monotonic() < deadline, f"containerd never listed {name} under its ID: {_refs(sock)}"
        time.sleep(0.5)
    return digest, layer


PLANTED_DIGESTS: list[str] = []


@pytest.fixture
def sock(kube: Kube) -> Iterator[Path]:
    path = kube.kubeconfig.parent / "containerd" / "containerd.sock"
    if not path.exists():
        pytest.skip(f"no local containerd at {path}: this cluster is not the one `make cluster-up` starts")
    yield path
    _ctr(path, "containers", "rm", CONTAINER, check=False)
    leftovers = [r for r, d in _refs(path).items() if d in PLANTED_DIGESTS]  # names and IDs
    if leftovers:
        _ctr(path, "images", "rm", "--sync", *leftovers, check=False)


def test_prune_frees_a_stale_image_and_keeps_used_kept_and_foreign_ones(kube: Kube, sock: Path, tmp_path: Path) -> None:
    stale_digest, stale_layer = _plant(sock, tmp_path, STALE)
    used_digest, _ = _plant(sock, tmp_path, IN_USE)
    _ctr(sock, "containers", "create", IN_USE, CONTAINER)
    other_digest, _ = _plant(sock, tmp_path, ID_ONLY)
    _ctr(sock, "images", "rm", ID_ONLY)  # now known only by its ID
    other_ids = _ids(_refs(sock), other_digest)
    assert other_ids
    before = _refs(sock)
    keep = sorted(r for r in before if not r.startswith("sha256:") and r.startswith("localhost/tuneforge-")
                  and r not in (STALE, IN_USE))

    env = {**os.environ, "CLUSTER_RUN": str(kube.kubeconfig.parent)}
    proc = subprocess.run([str(ROOT / "deploy" / "cluster" / "prune-images.sh"), *keep], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr

    after = _refs(sock)
    assert STALE not in after
    assert stale_digest not in after.values(), f"a reference still holds the stale image: {after}"
    content = set(_ctr(sock, "content", "ls", "-q").split())
    assert stale_digest not in content and stale_layer not in content, "the stale image's blobs were not freed"
    assert IN_USE in after and _ids(after, used_digest), "prune removed an image a container uses"
    assert all(i in after for i in other_ids), "prune removed an image it did not remove by name"
    for ref in keep + [r for r in before if not r.startswith(("sha256:", "localhost/tuneforge-"))]:
        assert ref in after, f"prune removed {ref}, which it must keep"
        assert all(i in after for i in _ids(before, before[ref])), f"prune removed the ID reference of kept {ref}"
