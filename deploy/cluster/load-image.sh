#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Moves images from podman or docker into the local cluster's containerd (what `kind load` does):
#   deploy/cluster/load-image.sh IMAGE [IMAGE...]
# CONTAINER_ENGINE picks the engine and its flags (default: podman if present, else docker), e.g.
# CONTAINER_ENGINE="podman --root /x --runroot /y". Pods must use the same name (podman names local
# images localhost/NAME:TAG) with imagePullPolicy IfNotPresent or Never: nothing can be pulled here.
# Images already in containerd are skipped. An image takes its size twice on disk (layers + unpacked snapshot); CLUSTER_COMPRESS_BLOBS=1 keeps
# the layers gzip-compressed (less disk, slower to load). The disk is shared: an image that would
# leave less than CLUSTER_DISK_MARGIN_GB (default 3) free is loaded compressed, or refused when even
# that would not fit.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
[ $# -ge 1 ] || { echo "usage: $0 IMAGE [IMAGE...]" >&2; exit 2; }
running containerd || die "the cluster's containerd is not running (make cluster-up)"
engine=${CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then engine=podman; elif command -v docker >/dev/null; then engine=docker
  else die "neither podman nor docker found (set CONTAINER_ENGINE)"; fi
fi
read -r -a eng <<<"$engine"
import=(ctr --address "$CTR_SOCK" -n k8s.io images import)
[ -n "${CLUSTER_COMPRESS_BLOBS:-}" ] && import+=(--compress-blobs)
margin=$(( ${CLUSTER_DISK_MARGIN_GB:-3} * 1024 * 1024 * 1024 ))
# Root podman: a thin archive (thin-archive.py) carries only the layers containerd lacks, so a
# refreshed 7.6 GB ml image whose big layers are loaded already costs seconds and megabytes.
thin=""
if [ "$(basename "${eng[0]}")" = podman ] && [ ${#eng[@]} -eq 1 ] && [ "$(id -u)" = 0 ] &&
   [ -f "${CONTAINERS_STORAGE:-/var/lib/containers/storage}/overlay-layers/layers.json" ]; then
  thin=1
fi
for image in "$@"; do
  if has_image "$image"; then log "$image: already in containerd"; continue; fi
  t0=$(date +%s)
  if [ -n "$thin" ]; then
    size=$("$here/thin-archive.py" --missing-bytes "$image" "$CTR_SOCK") || die "cannot read $image from podman's storage"
  else
    size=$("${eng[@]}" image inspect --format '{{.Size}}' "$image" 2>/dev/null | head -n1) || size=""
  fi
  avail=$(( $(df --output=avail -k "$CONTAINERD_ROOT" 2>/dev/null | tail -n1) * 1024 ))
  cmd=("${import[@]}")
  if [ -n "$size" ] && [ "$size" -gt 0 ] 2>/dev/null; then
    if [ $(( 2 * size + margin )) -gt "$avail" ]; then
      [ $(( size * 3 / 2 + margin )) -le "$avail" ] ||
        die "not loading $image: it needs about $(( 2 * size >> 30 )) GiB, $(( avail >> 30 )) GiB are free (keep ${CLUSTER_DISK_MARGIN_GB:-3} GiB): free disk space first (make images-prune, make cluster-prune-images)"
      [[ " ${cmd[*]} " == *" --compress-blobs "* ]] || cmd+=(--compress-blobs)
      log "$image: $(( size >> 20 )) MiB to load, $(( avail >> 30 )) GiB free: loading it with compressed layers"
    fi
  fi
  if [ -n "$thin" ]; then save=("$here/thin-archive.py" "$image" "$CTR_SOCK")
  # podman: docker-archive keeps the name in the tar; docker save does that by default.
  elif [ "$(basename "${eng[0]}")" = podman ]; then save=("${eng[@]}" save --format docker-archive "$image")
  else save=("${eng[@]}" save "$image"); fi
  "${save[@]}" | "${cmd[@]}" - >"$RUN/logs/load-image.last" ||
    die "could not load $image (see $RUN/logs/load-image.last)"
  has_image "$image" || die "$image is not in containerd after the import (see $RUN/logs/load-image.last)"
  log "loaded $image into containerd in $(( $(date +%s) - t0 )) s ($(( ${size:-0} >> 20 )) MiB of new layers)"
done
