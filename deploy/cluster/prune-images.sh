#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Removes localhost/tuneforge-* images from the local cluster's containerd except the ones named:
#   deploy/cluster/prune-images.sh KEEP_IMAGE [KEEP_IMAGE...]
# containerd then frees the layers no image or running container uses (`make cluster-prune-images`).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
running containerd || die "the cluster's containerd is not running (make cluster-up)"
keep=" $* "
listing=$(images)
while IFS= read -r ref; do
  [[ "$ref" == localhost/tuneforge-* && "$keep" != *" $ref "* ]] || continue
  ctr --address "$CTR_SOCK" -n k8s.io images rm "$ref" >/dev/null && log "removed $ref"
done <<<"$listing"
