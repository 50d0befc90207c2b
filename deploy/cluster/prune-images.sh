#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Removes localhost/tuneforge-* images from the local cluster's containerd except the ones named:
#   deploy/cluster/prune-images.sh KEEP_IMAGE [KEEP_IMAGE...]
# The CRI plugin also holds every image under its ID (a `sha256:<config digest>` reference beside the
# name): an image's layers are freed only once both references are gone, so an ID reference is removed
# too when no remaining named image points at the same manifest. containerd then frees the layers no
# image or running container uses (`make cluster-prune-images`); the last removal waits for that.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
running containerd || die "the cluster's containerd is not running (make cluster-up)"
keep=" $* "
# REF DIGEST (the manifest digest) per reference.
listing=$(ctr --address "$CTR_SOCK" -n k8s.io images ls | awk 'NR > 1 {print $1, $3}')
drop=() kept_digests=" "
while read -r ref digest; do
  [[ -n "$ref" && "$ref" != sha256:* ]] || continue
  if [[ "$ref" == localhost/tuneforge-* && "$keep" != *" $ref "* ]]; then drop+=("$ref")
  else kept_digests+="$digest "; fi
done <<<"$listing"
while read -r ref digest; do
  [[ "$ref" == sha256:* && "$kept_digests" != *" $digest "* ]] && drop+=("$ref")
done <<<"$listing"
[[ ${#drop[@]} -gt 0 ]] || { log "nothing to remove"; exit 0; }
before=$(du -sm "$CONTAINERD_ROOT" 2>/dev/null | cut -f1 || echo 0)
for ref in "${drop[@]}"; do log "removing $ref"; done
ctr --address "$CTR_SOCK" -n k8s.io images rm --sync "${drop[@]}" >/dev/null
after=$(du -sm "$CONTAINERD_ROOT" 2>/dev/null | cut -f1 || echo 0)
log "removed ${#drop[@]} references; containerd's root went from $before to $after MiB"
