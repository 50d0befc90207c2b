#!/usr/bin/env python3
"""Write an OCI archive of a podman image that carries only the layers containerd lacks.

    thin-archive.py IMAGE CTR_ADDRESS > image.tar ; ctr -n k8s.io images import image.tar
    thin-archive.py --missing-bytes IMAGE CTR_ADDRESS    the bytes of the layers containerd lacks

`podman save` writes the whole image to a temporary file first (7.6 GB for the ml image) and
containerd ingests every layer again before it finds it already has it: a refreshed ml image
(docker/Dockerfile.overlay) would need ~15 GB of free disk for a few MB of change. Here the
image's manifest, config and the missing layers are reassembled byte for byte from podman's
storage (the layer's tar-split metadata plus its diff folder), and the layers containerd already
holds (same uncompressed digest) are referenced, not copied. Root podman storage only.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

STORAGE = os.environ.get("CONTAINERS_STORAGE", "/var/lib/containers/storage")


def podman_json(*args: str) -> object:
    return json.loads(subprocess.run(["podman", *args], check=True, capture_output=True, text=True).stdout)


def big_data(image_id: str, key: str) -> bytes:
    name = "=" + base64.b64encode(key.encode()).decode()
    with open(os.path.join(STORAGE, "overlay-images", image_id, name), "rb") as f:
        return f.read()


def layer_tar(layer_id: str):
    """The layer's exact tar stream from its tar-split record and diff folder."""
    diff = os.path.join(STORAGE, "overlay", layer_id, "diff")
    with gzip.open(os.path.join(STORAGE, "overlay-layers", f"{layer_id}.tar-split.gz"), "rt") as f:
        for line in f:
            entry = json.loads(line)
            if entry["type"] == 2:  # raw tar segment (headers, padding)
                yield base64.b64decode(entry["payload"])
            elif entry["type"] == 1 and entry.get("size"):  # a file's content, from the diff folder
                with open(os.path.join(diff, entry["name"]), "rb") as g:
                    left = entry["size"]
                    while left:
                        chunk = g.read(min(left, 1 << 20))
                        if not chunk:
                            raise SystemExit(f"{entry['name']}: shorter than its tar-split record")
                        left -= len(chunk)
                        yield chunk


def containerd_blobs(ctr: list[str]) -> set[str]:
    listing = subprocess.run([*ctr, "content", "ls", "-q"], check=True, capture_output=True, text=True).stdout
    return set(listing.split())


def main() -> None:
    args = sys.argv[1:]
    count_only = args[:1] == ["--missing-bytes"]
    image, address = args[1:] if count_only else args
    ctr = ["ctr", "--address", address, "-n", "k8s.io"]
    info = podman_json("image", "inspect", image)[0]  # type: ignore[index]
    image_id = info["Id"]
    config = big_data(image_id, f"sha256:{image_id}")
    diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    with open(os.path.join(STORAGE, "overlay-layers", "layers.json")) as f:
        stored = [layer for layer in json.load(f) if layer.get("diff-digest")]
    by_diff = {layer["diff-digest"]: layer for layer in stored}
    # Layers stay uncompressed: their digest is the diff_id, which is how containerd holds the
    # layers `load-image.sh` imported (docker-archive).
    present = containerd_blobs(ctr)
    layers, blobs = [], {}
    for diff_id in diff_ids:
        layer_id, size = by_diff[diff_id]["id"], by_diff[diff_id]["diff-size"]
        layers.append({"mediaType": "application/vnd.docker.image.rootfs.diff.tar", "digest": diff_id, "size": size})
        if diff_id not in present:
            blobs[diff_id] = layer_id
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": f"sha256:{image_id}", "size": len(config)},
        "layers": layers}).encode()
    if count_only:
        print(sum(by_diff[d]["diff-size"] for d in blobs))
        return
    mdigest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    name = image if "/" in image.split(":")[0] else f"docker.io/library/{image}"
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": mdigest,
        "size": len(manifest), "annotations": {"io.containerd.image.name": name,
                                               "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}}]}).encode()
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as out:

        def add(path: str, data: bytes) -> None:
            ti = tarfile.TarInfo(path)
            ti.size = len(data)
            out.addfile(ti, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add(f"blobs/sha256/{image_id}", config)
        add(f"blobs/sha256/{mdigest[7:]}", manifest)
        for diff_id, layer_id in blobs.items():
            data = b"".join(layer_tar(layer_id))
            got = "sha256:" + hashlib.sha256(data).hexdigest()
            if got != diff_id:
                raise SystemExit(f"layer {layer_id}: reassembled digest {got} != {diff_id}")
            add(f"blobs/sha256/{diff_id[7:]}", data)
        add("index.json", index)
    print(f"{image}: {len(blobs)} of {len(layers)} layers written, the rest are in containerd", file=sys.stderr)


if __name__ == "__main__":
    main()
