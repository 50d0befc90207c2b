#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Writes a single-layer image FROM scratch as a docker-archive tar that `ctr images import` (and
# `podman load`) read, without any container engine: image-archive.sh OUT.tar NAME:TAG ROOTFS-DIR
# ENTRYPOINT [ARG...]. Used for the pause image and the smoke test's image.
set -euo pipefail
out=$1 name=$2 rootfs=$3; shift 3
[ $# -ge 1 ] || { echo "usage: $0 OUT.tar NAME:TAG ROOTFS-DIR ENTRYPOINT [ARG...]" >&2; exit 2; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
layer=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
mkdir "$work/$layer"; mv "$work/layer.tar" "$work/$layer/layer.tar"
entry=$(printf '%s\n' "$@" | python3 -c 'import json,sys; print(json.dumps([l.rstrip("\n") for l in sys.stdin]))')
printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":%s,"User":"65535:65535"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"deploy/cluster/image-archive.sh"}]}' \
  "$entry" "$layer" >"$work/config.json"
cfg=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mv "$work/config.json" "$work/$cfg.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$cfg" "$name" "$layer" >"$work/manifest.json"
tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work" -cf "$out" manifest.json "$cfg.json" "$layer"
