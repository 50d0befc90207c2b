#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Removes localhost/tuneforge-* images from the local cluster's containerd except the ones named:
#   deploy/cluster/prune-images.sh KEEP_IMAGE [KEEP_IMAGE...]
# An image a container still uses stays (containerd would let it go, and the pod's next restart could
# not find it). The CRI plugin also holds every image under its ID (a `sha256:<config digest>`
# reference beside the name): an image's layers are freed only once both are gone, so the ID
# reference of a removed image goes too, unless a kept name points at the same manifest. Nothing else
# is touched. containerd then frees the layers no image or container uses (`make cluster-prune-images`);
# the removal waits for that.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
running containerd || die "the cluster's containerd is not running (make cluster-up)"
keep=" $* "
used=" $(kctr containers ls | awk 'NR > 1 {printf "%s ", $2}')"
# REF DIGEST (the manifest digest) per reference.
listing=$(kctr images ls | awk 'NR > 1 {print $1, $3}')
drop=() dropped_digests=" " kept_digests=" "
while read -r ref digest; do
  [[ -n "$ref" && "$ref" != sha256:* ]] || continue
  if [[ "$ref" == localhost/tuneforge-* && "$keep" != *" $ref "* && "$used" != *" $ref "* ]]; then
    drop+=("$ref") dropped_digests+="$digest "
  else
    [[ "$ref" == localhost/tuneforge-* && "$keep" != *" $ref "* ]] && log "kept $ref: a container uses it"
    kept_digests+="$digest "
  fi
done <<<"$listing"
while read -r ref digest; do
  [[ "$ref" == sha256:* && "$dropped_digests" == *" $digest "* && "$kept_digests" != *" $digest "* ]] && drop+=("$ref")
done <<<"$listing"
[[ ${#drop[@]} -gt 0 ]] || { log "nothing to remove"; exit 0; }
size() { (du -sm "$CONTAINERD_ROOT" 2>/dev/null || true) | cut -f1; }
before=$(size)
for ref in "${drop[@]}"; do log "removing $ref"; done
kctr images rm --sync "${drop[@]}" >/dev/null
log "removed ${#drop[@]} references; containerd's root went from ${before:-?} to $(size) MiB"
