#!/usr/bin/env bash
# Bring up tuneforge on a local kind cluster: create the cluster, build the four service images and
# load them into it, start an S3 server (MinIO) and PostgreSQL, install the Helm chart, and wait
# until every service answers its health check.
#
# Needs: kind, kubectl, helm (v3 or v4) and a container engine (docker, or podman with
# KIND_EXPERIMENTAL_PROVIDER=podman, set here automatically when podman is the engine).
#
# Usage: deploy/kind/up.sh            (idempotent: re-running rebuilds images and upgrades the release)
#        deploy/kind/down.sh          (deletes the cluster)
#
# Environment (all optional):
#   KIND_CLUSTER      cluster name                         (default: tuneforge)
#   KIND_NAMESPACE    namespace of the stack               (default: tuneforge)
#   KIND_NODE_IMAGE   kindest/node image to pin Kubernetes (default: kind's own)
#   CONTAINER_ENGINE  docker or podman                     (default: the first that answers)
#   IMAGE_TAG         tag of the built images              (default: dev)
#   S3_IMAGE, POSTGRES_IMAGE   images of the dependencies  (default: those in deploy/kind/deps/)
#   SKIP_BUILD=1      reuse images already loaded in the cluster
#
# Credentials are random, generated on first run into Secrets of the namespace, and never printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${KIND_CLUSTER:-tuneforge}"
NS="${KIND_NAMESPACE:-tuneforge}"
TAG="${IMAGE_TAG:-dev}"
RELEASE=tuneforge
IMAGE_REPO=localhost/tuneforge
SERVICES=(datasets training evaluation checkpoints)

log() { printf '[up.sh] %s\n' "$*" >&2; }
die() { printf '[up.sh] error: %s\n' "$*" >&2; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is not installed: $2"
}

pick_engine() {
  if [[ -n "${CONTAINER_ENGINE:-}" ]]; then
    "${CONTAINER_ENGINE}" info >/dev/null 2>&1 || die "CONTAINER_ENGINE=${CONTAINER_ENGINE} does not answer '${CONTAINER_ENGINE} info'"
    echo "${CONTAINER_ENGINE}"
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo docker
  elif command -v podman >/dev/null 2>&1 && podman info >/dev/null 2>&1; then
    echo podman
  else
    die "no container engine answers: start the Docker daemon, or install podman (kind needs one to run its node)"
  fi
}

random_hex() {  # random_hex BYTES
  od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

ensure_cluster() {
  if kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
    log "cluster ${CLUSTER} exists"
  else
    log "creating kind cluster ${CLUSTER}"
    local args=(create cluster --name "${CLUSTER}" --config "${ROOT}/deploy/kind/cluster.yaml" --wait 180s)
    [[ -n "${KIND_NODE_IMAGE:-}" ]] && args+=(--image "${KIND_NODE_IMAGE}")
    kind "${args[@]}"
  fi
  kubectl config use-context "kind-${CLUSTER}" >/dev/null
}

build_and_load() {  # build_and_load ENGINE
  local engine="$1" svc image work
  work="$(mktemp -d)"
  for svc in "${SERVICES[@]}"; do
    image="${IMAGE_REPO}-${svc}:${TAG}"
    log "building ${image}"
    if [[ "${engine}" == podman ]]; then
      podman build --format docker --ignorefile "${ROOT}/docker/Dockerfile.dockerignore" \
        -f "${ROOT}/docker/Dockerfile" --build-arg "SERVICE=${svc}" -t "${image}" "${ROOT}"
      podman save --format docker-archive -o "${work}/${svc}.tar" "${image}"
      kind load image-archive "${work}/${svc}.tar" --name "${CLUSTER}"
    else
      docker build -f "${ROOT}/docker/Dockerfile" --build-arg "SERVICE=${svc}" -t "${image}" "${ROOT}"
      kind load docker-image "${image}" --name "${CLUSTER}"
    fi
  done
  rm -rf "${work}"
}

# Create a generic Secret from NAME=VALUE pairs unless it exists (so re-runs keep the credentials
# the running S3 server and database were initialised with). Values go through files, never argv.
ensure_secret() {  # ensure_secret NAME KEY=VALUE...
  local name="$1" dir kv args=()
  shift
  if kubectl -n "${NS}" get secret "${name}" >/dev/null 2>&1; then
    return
  fi
  dir="$(mktemp -d)"
  chmod 700 "${dir}"
  for kv in "$@"; do
    printf '%s' "${kv#*=}" >"${dir}/${kv%%=*}"
    args+=(--from-file "${kv%%=*}=${dir}/${kv%%=*}")
  done
  kubectl -n "${NS}" create secret generic "${name}" "${args[@]}" >/dev/null
  rm -rf "${dir}"
  log "created Secret ${name}"
}

ensure_credentials() {
  local s3_user s3_password pg_password
  kubectl get namespace "${NS}" >/dev/null 2>&1 || kubectl create namespace "${NS}" >/dev/null
  if ! kubectl -n "${NS}" get secret tuneforge-s3-root >/dev/null 2>&1; then
    s3_user="tf$(random_hex 8)"
    s3_password="$(random_hex 24)"
    # The local stack uses the S3 root credentials for tuneforge; a real cluster gives it its own key.
    ensure_secret tuneforge-s3-root "user=${s3_user}" "password=${s3_password}"
    kubectl -n "${NS}" delete secret tuneforge-s3 --ignore-not-found >/dev/null
    ensure_secret tuneforge-s3 "accessKey=${s3_user}" "secretKey=${s3_password}"
  fi
  if ! kubectl -n "${NS}" get secret tuneforge-postgres >/dev/null 2>&1; then
    pg_password="$(random_hex 24)"
    ensure_secret tuneforge-postgres "password=${pg_password}"
    kubectl -n "${NS}" delete secret tuneforge-database --ignore-not-found >/dev/null
    ensure_secret tuneforge-database "url=postgresql+psycopg://tuneforge:${pg_password}@postgres:5432/tuneforge"
  fi
  ensure_secret tuneforge-auth "tokens=dev:$(random_hex 24)"
}

install_deps() {
  log "starting S3 (MinIO) and PostgreSQL"
  kubectl -n "${NS}" apply -f "${ROOT}/deploy/kind/deps/" >/dev/null
  [[ -n "${S3_IMAGE:-}" ]] && kubectl -n "${NS}" set image deployment/s3 "minio=${S3_IMAGE}" >/dev/null
  [[ -n "${POSTGRES_IMAGE:-}" ]] && kubectl -n "${NS}" set image deployment/postgres "postgres=${POSTGRES_IMAGE}" >/dev/null
  kubectl -n "${NS}" rollout status deployment/s3 --timeout=300s
  kubectl -n "${NS}" rollout status deployment/postgres --timeout=300s
}

install_chart() {
  log "installing the tuneforge chart"
  helm upgrade --install "${RELEASE}" "${ROOT}/helm/tuneforge" --namespace "${NS}" \
    -f "${ROOT}/deploy/kind/values-kind.yaml" \
    --set "image.repository=${IMAGE_REPO}" --set "image.tag=${TAG}" \
    --wait --timeout 10m
  local svc
  for svc in "${SERVICES[@]}"; do
    # Readiness is the kubelet's native gRPC probe against grpc.health.v1: ready == SERVING.
    kubectl -n "${NS}" rollout status "deployment/${RELEASE}-${svc}" --timeout=300s
  done
}

main() {
  need kind "https://kind.sigs.k8s.io (or: go install sigs.k8s.io/kind@latest)"
  need kubectl "https://kubernetes.io/docs/tasks/tools/"
  need helm "https://helm.sh/docs/intro/install/ (or: go install helm.sh/helm/v4/cmd/helm@latest)"
  local engine
  engine="$(pick_engine)"
  [[ "${engine}" == podman ]] && export KIND_EXPERIMENTAL_PROVIDER=podman
  log "container engine: ${engine}"
  ensure_cluster
  if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    build_and_load "${engine}"
  fi
  ensure_credentials
  install_deps
  install_chart
  log "tuneforge is up in namespace ${NS} of kind-${CLUSTER}. Reach a service with:"
  log "  kubectl -n ${NS} port-forward svc/${RELEASE}-training 50051:50051"
  log "  buf curl --protocol grpc --http2-prior-knowledge --list-methods http://127.0.0.1:50051"
  log "the API token (tenant 'dev') is in Secret ${NS}/tuneforge-auth, key 'tokens'"
}

main "$@"
