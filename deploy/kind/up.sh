#!/usr/bin/env bash
# tuneforge on a local kind cluster (a laptop with Docker or Podman): create the cluster, install
# the KubeRay operator, build the images (docker/images.sh) and load them, and, with --install,
# install the chart's dev profile (its own S3 server, PostgreSQL and token) and wait until ready.
# `make kind-test` runs the e2e tests against it (they install their own release).
#
# Needs: kind, kubectl, helm (v3 or v4), a container engine, and the network for KubeRay's chart.
#
# Usage: deploy/kind/up.sh [--install]     (idempotent)
#        deploy/kind/down.sh                (deletes the cluster)
#
# Environment (all optional):
#   KIND_CLUSTER      cluster name                          (default: tuneforge)
#   KIND_NAMESPACE    namespace of --install's release      (default: tuneforge)
#   KIND_NODE_IMAGE   kindest/node image to pin Kubernetes  (default: kind's own)
#   KUBERAY_VERSION   KubeRay operator chart version        (default: 1.5.0)
#   CONTAINER_ENGINE  docker or podman                      (default: the first that answers)
#   SKIP_BUILD=1      load the images already built
# Writes the cluster's kubeconfig to .run/kind/kubeconfig (what the e2e tests take).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${KIND_CLUSTER:-tuneforge}"
NS="${KIND_NAMESPACE:-tuneforge}"
KUBERAY_VERSION="${KUBERAY_VERSION:-1.5.0}"
RELEASE=tuneforge
ROLES=(datasets ml gate s3 postgres)
KUBECONFIG_OUT="${ROOT}/.run/kind/kubeconfig"

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

ensure_cluster() {
  if kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
    log "cluster ${CLUSTER} exists"
  else
    log "creating kind cluster ${CLUSTER}"
    local args=(create cluster --name "${CLUSTER}" --config "${ROOT}/deploy/kind/cluster.yaml" --wait 180s)
    [[ -n "${KIND_NODE_IMAGE:-}" ]] && args+=(--image "${KIND_NODE_IMAGE}")
    kind "${args[@]}"
  fi
  mkdir -p "$(dirname "${KUBECONFIG_OUT}")"
  kind get kubeconfig --name "${CLUSTER}" >"${KUBECONFIG_OUT}"
  chmod 600 "${KUBECONFIG_OUT}"
  export KUBECONFIG="${KUBECONFIG_OUT}"
}

ensure_kuberay() {
  if kubectl get crd rayclusters.ray.io >/dev/null 2>&1; then
    log "KubeRay CRDs present"
    return
  fi
  log "installing the KubeRay operator ${KUBERAY_VERSION}"
  helm repo add kuberay https://ray-project.github.io/kuberay-helm/ >/dev/null
  helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "${KUBERAY_VERSION}" \
    --namespace kuberay-system --create-namespace --wait --timeout 10m
}

build_and_load() {  # build_and_load ENGINE
  local engine="$1" role ref archive
  if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    CONTAINER_ENGINE="${engine}" "${ROOT}/docker/images.sh" build "${ROLES[@]}"
  fi
  for role in "${ROLES[@]}"; do
    ref="$(CONTAINER_ENGINE="${engine}" "${ROOT}/docker/images.sh" ref "${role}")"
    log "loading ${ref}"
    if [[ "${engine}" == podman ]]; then
      CONTAINER_ENGINE=podman "${ROOT}/docker/images.sh" save "${role}"
      archive="${IMAGE_CACHE:-${HOME}/.cache/tuneforge/images}/archives/tuneforge-${role}-$(basename "${ref##*:}").tar"
      kind load image-archive "${archive}" --name "${CLUSTER}"
    else
      kind load docker-image "${ref}" --name "${CLUSTER}"
    fi
  done
}

install_chart() {
  log "installing the tuneforge chart (dev profile) into namespace ${NS}"
  helm upgrade --install "${RELEASE}" "${ROOT}/helm/tuneforge" --namespace "${NS}" --create-namespace \
    -f "${ROOT}/helm/tuneforge/values-dev.yaml" -f "${ROOT}/deploy/kind/values-kind.yaml" \
    --wait --timeout 20m
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
  ensure_kuberay
  build_and_load "${engine}"
  if [[ "${1:-}" == --install ]]; then
    install_chart
    log "tuneforge is up in namespace ${NS}; helm status ${RELEASE} -n ${NS} prints the next steps"
  fi
  log "KUBECONFIG=${KUBECONFIG_OUT}"
}

main "$@"
