#!/usr/bin/env bash
# Build tuneforge's images with docker or podman (called by `make images`; docker/README.md).
#
#   docker/images.sh base                 bootstrap the Debian base (mmdebstrap, cached) and import it
#   docker/images.sh build ROLE...        build roles: datasets ml gate s3 postgres (ml-cuda: GPU clusters)
#   docker/images.sh save ROLE...         write each image as a docker-archive tar (for containerd/kind)
#   docker/images.sh sizes                print each built image's size
#   docker/images.sh cached ROLE...       the e2e images, by content: reuse, refresh (thin overlay) or
#                                         build, all tagged with `docker/images.sh tag` (see below)
#   docker/images.sh tag                  the content tag: <appVersion>-<hash of every role's inputs>
#   docker/images.sh prune                remove tuneforge images other than the current ones, dangling
#                                         layers and the newest full (base-*) image per role kept
#   docker/images.sh has-full-build ROLE  exit 0 when a full build of ROLE is cached (a refresh suffices)
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

# ---- content-addressed images (`make e2e`) --------------------------------------------------
# A role's key is a hash of what goes into its image; an image that exists for a key is reused. The
# ML stack (7.6 GB, ~20 min to build) is built in full only when no earlier full build exists: a
# source change (or a lock change) is a thin docker/Dockerfile.overlay layer over the newest full
# build, which installs this commit's wheel and brings the packages to the lock, then checks them.

# hash_files PATH...: sha256 over the names and contents of the files under PATHs that git tracks
# or would track (git-ignored files such as generated stubs and caches are left out), 12 hex digits.
hash_files() {
  (
    cd "$ROOT"
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
      git ls-files -co --exclude-standard -z -- "$@"
    else  # no git: the same files by find (a ':(exclude)PATH' pathspec becomes ! -path 'PATH/*')
      local arg paths=() skip=()
      for arg in "$@"; do
        if [[ "$arg" == ':(exclude)'* ]]; then skip+=(! -path "${arg#:(exclude)}/*"); else paths+=("$arg"); fi
      done
      find "${paths[@]}" -type f ! -path '*/__pycache__/*' ! -path '*/v1/*_pb2*' "${skip[@]}" -print0
    fi | LC_ALL=C sort -zu | while IFS= read -r -d '' f; do
      [[ -f "$f" ]] && printf '%s\0' "$f"  # tracked but deleted in the work tree: left out
    done | xargs -0 -r sha256sum
  ) | sha256sum | cut -c1-12
}

base_id() { "$ENGINE" image inspect --format '{{.Id}}' "$BASE_NAME:$SUITE" 2>/dev/null || echo "${BASE_IMAGE:-}"; }

DEPS_FILES=(docker/Dockerfile docker/Dockerfile.dockerignore docker/grpc_health_probe.py
            pyproject.toml requirements.lock requirements-deepspeed.lock)
# (services/gate is the gate image's, not the Python images': a change there rebuilds only that one.)
SRC_FILES=(pyproject.toml README.md requirements.lock requirements-deepspeed.lock protos services
           ':(exclude)services/gate' docker/Dockerfile.overlay docker/check_lock.py docker/grpc_health_probe.py)

GATE_FILES=(services/gate docker/gate.Dockerfile)
go_version() { go env GOVERSION 2>/dev/null || echo "no-go"; }

# deps_key ROLE: what a full build of ROLE depends on besides the sources (the base, the Dockerfile,
# the locks). role_key ROLE: everything the role's image is made of.
deps_key() {
  printf '%s %s %s %s' "$1" "$(base_id)" "${TORCH_INDEX_URL:-}" "$(hash_files "${DEPS_FILES[@]}")" |
    sha256sum | cut -c1-12
}
role_key() {
  case "$1" in
    datasets|ml) printf '%s %s' "$(deps_key "$1")" "$(hash_files "${SRC_FILES[@]}")" ;;
    gate) printf 'gate %s %s' "$(go_version)" "$(hash_files "${GATE_FILES[@]}")" ;;
    s3) printf 's3 %s %s' "$S3_SERVER_VERSION" "$(hash_files docker/s3.Dockerfile)" ;;
    postgres) printf 'postgres %s %s' "$(base_id)" "$(hash_files docker/postgres)" ;;
    *) echo "unknown role '$1'" >&2; exit 2 ;;
  esac | sha256sum | cut -c1-12
}

# The tag every e2e image gets (the chart takes one image.tag): appVersion plus a hash of the keys
# of all roles built here.
content_tag() {
  local role keys=""
  for role in datasets ml gate s3 postgres; do keys+="$(role_key "$role") "; done
  printf '%s-%s' "$TAG" "$(printf '%s' "$keys" | sha256sum | cut -c1-12)"
}

has_image() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

# newest_base ROLE: the newest full build of ROLE (tagged base-<deps key>), the exact key first.
newest_base() {
  local role="$1" exact
  exact="$REGISTRY/tuneforge-$role:base-$(deps_key "$role")"
  if has_image "$exact"; then printf '%s' "$exact"; return; fi
  "$ENGINE" images --format '{{.CreatedAt}}\t{{.Repository}}:{{.Tag}}' "$REGISTRY/tuneforge-$role" |
    awk -F'\t' '$2 ~ /:base-/' | sort -r | head -n1 | cut -f2
}

# overlay ROLE BASE OUT: docker/Dockerfile.overlay over BASE, pinned by its image id.
overlay() {
  local role="$1" base="$2" out="$3" id
  id="$("$ENGINE" image inspect --format '{{.Id}}' "$base")"
  local extras="" more="" checks="tuneforge.datasets.app"
  if [[ "$role" == ml ]]; then
    extras="[ml]"; more="ray[default,train]"
    checks="tuneforge.training.app tuneforge.evaluation.app tuneforge.checkpoints.app tuneforge.engine.distributed"
  fi
  log "$role: thin refresh over $base (${id:0:12})"
  build "$role-overlay" "$out" docker/Dockerfile.overlay . --build-arg "FROM_IMAGE=$id" \
    --build-arg "WHEEL_EXTRAS=$extras" --build-arg "MORE_REQUIREMENTS=$more" --build-arg "CHECK_IMPORTS=$checks" \
    ${TORCH_INDEX_URL:+--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"}
}

# cached_role ROLE CONTENT_TAG: makes $REGISTRY/tuneforge-ROLE:CONTENT_TAG from what exists.
cached_role() {
  local role="$1" ctag="$2" key out base ctx
  out="$REGISTRY/tuneforge-$role:$ctag"
  if has_image "$out"; then log "$role: $out present"; return; fi
  key="$(role_key "$role")"
  local keyed="$REGISTRY/tuneforge-$role:in-$key"
  if ! has_image "$keyed"; then
    case "$role" in
      datasets|ml)
        base="$(newest_base "$role")"
        if [[ -n "$base" && -z "${IMAGES_FULL:-}" ]]; then
          overlay "$role" "$base" "$keyed"
        else
          build "$role" "$keyed" docker/Dockerfile . --target "$role" \
            ${TORCH_INDEX_URL:+--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"}
          "$ENGINE" tag "$keyed" "$REGISTRY/tuneforge-$role:base-$(deps_key "$role")"
        fi ;;
      gate) ctx="$(gate_context)" || exit 1; build gate "$keyed" docker/gate.Dockerfile "$ctx" ;;
      s3) build s3 "$keyed" docker/s3.Dockerfile "$(s3_context)" ;;
      postgres) build postgres "$keyed" docker/postgres/Dockerfile docker/postgres ;;
    esac
  else
    log "$role: inputs unchanged ($keyed)"
  fi
  "$ENGINE" tag "$keyed" "$out"
}

cmd_cached() {
  cmd_base
  local ctag role
  ctag="$(content_tag)"
  for role in "$@"; do cached_role "$role" "$ctag"; done
  log "images ready: tag $ctag"
}

# Everything tuneforge-* other than the current content tag, its in-* keys, the newest base-* per
# role, the appVersion tags and the base; then dangling layers.
cmd_prune() {
  local ctag keep=() role ref
  ctag="$(content_tag)"
  for role in datasets ml gate s3 postgres; do
    keep+=("$REGISTRY/tuneforge-$role:$ctag" "$REGISTRY/tuneforge-$role:in-$(role_key "$role")"
           "$REGISTRY/tuneforge-$role:$TAG")
    [[ "$role" == datasets || "$role" == ml ]] && keep+=("$(newest_base "$role")")
  done
  while IFS= read -r ref; do
    [[ "$ref" == "$BASE_NAME:"* || " ${keep[*]} " == *" $ref "* ]] && continue
    if "$ENGINE" rmi "$ref" >/dev/null 2>&1; then log "removed $ref"
    else log "kept $ref: $ENGINE cannot remove it (a container uses it?)"; fi
  done < <("$ENGINE" images --format '{{.Repository}}:{{.Tag}}' | grep "^$REGISTRY/tuneforge-" | grep -v ':<none>$')
  "$ENGINE" image prune -f >/dev/null
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

# gate_context: a build context holding only a static tuneforge-gate (CGO off: FROM scratch has no
# libc), built from services/gate and cached by the hash of its sources and the Go version. Called
# as `ctx="$(gate_context)" || exit` (a command substitution does not inherit set -e): every step
# returns on failure, and the context is emptied first, so an old binary can never be built in.
gate_context() {
  command -v go >/dev/null || { echo "go is missing: the gate image is built from services/gate (Go)" >&2; return 1; }
  local bin ctx="$CACHE/gate-context"
  bin="$CACHE/bin/tuneforge-gate-$(hash_files "${GATE_FILES[@]}")-$(go_version)-static"
  rm -rf "$ctx" && mkdir -p "$ctx" "$CACHE/bin" || return 1
  if [[ ! -x "$bin" ]]; then
    log "building a static tuneforge-gate from services/gate"
    (cd services/gate && CGO_ENABLED=0 GOWORK=off nice -n 10 go build -trimpath -ldflags "-s -w" -o "$bin.tmp" .) \
      || return 1
    mv "$bin.tmp" "$bin" || return 1
    # Older builds of the gate (other sources) are not needed again.
    find "$CACHE/bin" -maxdepth 1 -name 'tuneforge-gate-*-static' ! -path "$bin" -delete
  fi
  cp "$bin" "$ctx/tuneforge-gate" || return 1
  printf '%s' "$ctx"
}

cmd_build() {
  cmd_base
  local role ctx
  for role in "$@"; do
    case "$role" in
      datasets|ml) build "$role" "$(image_ref "$role")" docker/Dockerfile . --target "$role" \
                     ${TORCH_INDEX_URL:+--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"}
                   # a full build: what `images.sh cached` refreshes thinly after source changes
                   "$ENGINE" tag "$(image_ref "$role")" "$REGISTRY/tuneforge-$role:base-$(deps_key "$role")" ;;
      ml-cuda) build "$role" "$(image_ref "$role")" docker/Dockerfile . --target ml-cuda \
                 ${CUDA_IMAGE:+--build-arg "CUDA_IMAGE=$CUDA_IMAGE"} ;;
      gate) ctx="$(gate_context)" || exit 1; build gate "$(image_ref gate)" docker/gate.Dockerfile "$ctx" ;;
      s3) build s3 "$(image_ref s3)" docker/s3.Dockerfile "$(s3_context)" ;;
      postgres) build postgres "$(image_ref postgres)" docker/postgres/Dockerfile docker/postgres ;;
      *) echo "unknown role '$role': datasets, ml, ml-cuda, gate, s3 or postgres" >&2; exit 2 ;;
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
  for role in datasets ml ml-cuda gate s3 postgres; do
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
  cached) shift; cmd_cached "$@" ;;
  tag) cmd_base >/dev/null 2>&1; content_tag; echo ;;
  key) role_key "$2" ;;
  prune) cmd_prune ;;
  has-full-build) [[ -n "$(newest_base "$2")" ]] ;;
  ref) image_ref "$2"; echo ;;
  *) sed -n '2,18p' "$0" >&2; exit 2 ;;
esac
