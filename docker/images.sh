#!/usr/bin/env bash
# Build tuneforge's images with docker or podman (called by `make images`; docker/README.md).
#
#   docker/images.sh base                 bootstrap the Debian base (mmdebstrap, cached) and import it
#   docker/images.sh build ROLE...        build roles: datasets ml s3 postgres (ml-cuda: GPU clusters)
#   docker/images.sh save ROLE...         write each image as a docker-archive tar (for containerd/kind)
#   docker/images.sh sizes                print each built image's size
#
# Settings (environment): CONTAINER_ENGINE (podman|docker, default: podman when present),
# IMAGE_REGISTRY (localhost), IMAGE_TAG (the chart's appVersion), IMAGE_CACHE (outside the checkout,
# ~/.cache/tuneforge/images), PIP_CACHE (~/.cache/pip) and WHEELHOUSE (~/.cache/tuneforge/wheels):
# bind-mounted into the RUN steps by podman (the ML stack's wheels are downloaded once per machine),
# CA_DIR (/etc/ssl/certs, bind-mounted read-only by podman), BASE_SUITE (bookworm),
# BASE_IMAGE (skip the bootstrap: an image reference, pinned by digest), CUDA_IMAGE, TORCH_INDEX_URL.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ENGINE="${CONTAINER_ENGINE:-}"
if [[ -z "$ENGINE" ]]; then
  if command -v podman >/dev/null 2>&1; then ENGINE=podman; else ENGINE=docker; fi
fi
REGISTRY="${IMAGE_REGISTRY:-localhost}"
TAG="${IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' helm/tuneforge/Chart.yaml)}"
CACHE="${IMAGE_CACHE:-$HOME/.cache/tuneforge/images}"
PIP_CACHE="${PIP_CACHE:-$HOME/.cache/pip}"
WHEELHOUSE="${WHEELHOUSE:-$HOME/.cache/tuneforge/wheels}"
CA_DIR="${CA_DIR:-/etc/ssl/certs}"
SUITE="${BASE_SUITE:-bookworm}"
S3_SERVER_VERSION="${S3_SERVER_VERSION:-v1.8.0}"
TIMES="$CACHE/build-times.tsv"
BASE_NAME="$REGISTRY/tuneforge-base"

# The engine's scratch space (layer blobs, gigabytes for the ml image) stays outside the checkout.
export TMPDIR="$CACHE/tmp"
mkdir -p "$TMPDIR"

log() { printf '== %s\n' "$*" >&2; }

# podman on these machines: runc (crun refuses the hybrid cgroup layout), cgroupfs, file events and
# explicit ulimits (no CAP_SYS_RESOURCE); see docker/README.md. A user's own CONTAINERS_CONF wins.
if [[ "$ENGINE" == podman ]]; then
  export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/docker/podman/containers.conf}"
fi

image_ref() { printf '%s/tuneforge-%s:%s' "$REGISTRY" "$1" "$TAG"; }

# The base's digest reference: FROM <name>@sha256:<digest> pins it for every build.
base_ref() {
  if [[ -n "${BASE_IMAGE:-}" ]]; then printf '%s' "$BASE_IMAGE"; return; fi
  if [[ "$ENGINE" == docker ]]; then
    # docker resolves name@sha256 only against a registry's manifest digest, which an imported
    # image lacks: docker builds use the tag (its content is the cached, pinned tarball).
    printf '%s:%s' "$BASE_NAME" "$SUITE"; return
  fi
  local digest
  digest="$(podman image inspect --format '{{.Digest}}' "$BASE_NAME:$SUITE")"
  printf '%s@%s' "$BASE_NAME" "$digest"
}

cmd_base() {
  [[ -n "${BASE_IMAGE:-}" ]] && { log "BASE_IMAGE=$BASE_IMAGE given: no bootstrap"; return; }
  if "$ENGINE" image inspect "$BASE_NAME:$SUITE" >/dev/null 2>&1; then
    log "base $BASE_NAME:$SUITE present: $(base_ref)"
    return
  fi
  local tar="$CACHE/base-$SUITE.tar"
  mkdir -p "$CACHE"
  if [[ ! -s "$tar" ]]; then
    command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 1; }
    log "bootstrapping Debian $SUITE (mmdebstrap minbase + python3, about a minute) into $tar"
    local start=$SECONDS
    nice -n 10 mmdebstrap --variant=minbase --format=tar \
      --include=python3,python3-venv,ca-certificates "$SUITE" "$tar.tmp"
    mv "$tar.tmp" "$tar"
    printf 'base\tbootstrap\t%ss\t%s\n' "$((SECONDS - start))" "$(date -u +%FT%TZ)" >> "$TIMES"
  fi
  "$ENGINE" import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$tar" "$BASE_NAME:$SUITE" >/dev/null
  log "base imported: $(base_ref)"
}

build() {  # build TARGET_NAME IMAGE_REF DOCKERFILE CONTEXT [extra args...]
  local name="$1" ref="$2" file="$3" context="$4"
  shift 4
  local args=(build -f "$file" -t "$ref" --build-arg "BASE_IMAGE=$(base_ref)")
  if [[ "$ENGINE" == podman ]]; then
    # --format docker keeps SHELL and HEALTHCHECK (OCI drops them); --pull=never: no registry here;
    # the CA folder and --network host let pip and apt reach the package indexes; the host's pip
    # cache and wheelhouse serve torch's wheels after the first build.
    mkdir -p "$PIP_CACHE" "$WHEELHOUSE"
    # The CA folder goes to /run/host-ca, not over the image's own /etc/ssl/certs (packages such
    # as ssl-cert write there while they install).
    args+=(--format docker --pull=never --network host -v "$CA_DIR:/run/host-ca:ro"
           --build-arg "PIP_CERT=/run/host-ca/$(basename "${CA_BUNDLE:-ca-certificates.crt}")"
           -v "$PIP_CACHE:/root/.cache/pip" -v "$WHEELHOUSE:/wheelhouse")
  fi
  # BuildKit finds docker/Dockerfile.dockerignore by itself; podman is told.
  if [[ "$context" == . && "$ENGINE" == podman ]]; then args+=(--ignorefile docker/Dockerfile.dockerignore); fi
  args+=("$@" "$context")
  local start=$SECONDS
  log "building $ref ($ENGINE)"
  nice -n 10 "$ENGINE" "${args[@]}"
  local took=$((SECONDS - start))
  printf '%s\tbuild\t%ss\t%s\n' "$name" "$took" "$(date -u +%FT%TZ)" >> "$TIMES"
  log "built $ref in ${took}s, $(size_of "$ref")"
}

size_of() { "$ENGINE" image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1/1e6}'; }

s3_context() {  # a static versitygw (CGO off: FROM scratch has no libc), cached by version
  local bin="$CACHE/bin/versitygw-$S3_SERVER_VERSION-static" ctx="$CACHE/s3-context"
  if [[ ! -x "$bin" ]]; then
    log "building a static versitygw $S3_SERVER_VERSION (once)"
    mkdir -p "$CACHE/bin"
    local gobin
    gobin="$(mktemp -d)"
    CGO_ENABLED=0 GOBIN="$gobin" nice -n 10 go install -trimpath -ldflags "-s -w" \
      "github.com/versity/versitygw/cmd/versitygw@$S3_SERVER_VERSION"
    mv "$gobin/versitygw" "$bin"
    rmdir "$gobin"
  fi
  mkdir -p "$ctx"
  cp "$bin" "$ctx/versitygw"
  printf '%s' "$ctx"
}

cmd_build() {
  cmd_base
  local role
  for role in "$@"; do
    case "$role" in
      datasets|ml) build "$role" "$(image_ref "$role")" docker/Dockerfile . --target "$role" \
                     ${TORCH_INDEX_URL:+--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"} ;;
      ml-cuda) build "$role" "$(image_ref "$role")" docker/Dockerfile . --target ml-cuda \
                 ${CUDA_IMAGE:+--build-arg "CUDA_IMAGE=$CUDA_IMAGE"} ;;
      s3) build s3 "$(image_ref s3)" docker/s3.Dockerfile "$(s3_context)" ;;
      postgres) build postgres "$(image_ref postgres)" docker/postgres/Dockerfile docker/postgres ;;
      *) echo "unknown role '$role': datasets, ml, ml-cuda, s3 or postgres" >&2; exit 2 ;;
    esac
  done
}

cmd_save() {
  mkdir -p "$CACHE/archives"
  local role ref out
  for role in "$@"; do
    ref="$(image_ref "$role")"
    out="$CACHE/archives/tuneforge-$role-$TAG.tar"
    log "saving $ref to $out"
    rm -f "$out"
    if [[ "$ENGINE" == podman ]]; then
      "$ENGINE" save --format docker-archive -o "$out" "$ref"
    else
      docker save -o "$out" "$ref"
    fi
  done
}

cmd_sizes() {
  local role ref
  for role in datasets ml ml-cuda s3 postgres; do
    ref="$(image_ref "$role")"
    if "$ENGINE" image inspect "$ref" >/dev/null 2>&1; then
      printf '%-10s %-40s %s\n' "$role" "$ref" "$(size_of "$ref")"
    fi
  done
}

case "${1:-}" in
  base) cmd_base ;;
  build) shift; cmd_build "$@" ;;
  save) shift; cmd_save "$@" ;;
  sizes) cmd_sizes ;;
  ref) image_ref "$2"; echo ;;
  *) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac
