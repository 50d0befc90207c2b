#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# KubeRay on the local cluster: the CRDs and ClusterRole of the pinned operator version (from its Go
# module, so CRDs and operator always match), applied server-side, and the operator itself as a
# host process with its own token identity. KUBERAY_CRDS=DIR applies other CRDs (e.g. newer ones).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
mod=$(cd / && go mod download -json "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION" |
  sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
[ -d "$mod/config/crd/bases" ] || die "KubeRay module source not found ($mod)"
crds=${KUBERAY_CRDS:-$mod/config/crd/bases}
# The CRDs are big (3 MB): apply them only when these are not the ones applied last (a label says).
sum=$(cat "$crds"/ray.io_*.yaml | sha256sum | cut -c1-16)
if [ "$(kctl get crd rayclusters.ray.io -o jsonpath='{.metadata.labels.tuneforge\.local/crds}' 2>/dev/null)" != "$sum" ]; then
  for f in "$crds"/ray.io_*.yaml; do
    kctl apply --server-side --force-conflicts --field-manager=tuneforge-cluster -f "$f" >/dev/null
  done
  names=()
  for f in "$crds"/ray.io_*.yaml; do b=$(basename "$f" .yaml); names+=("crd/${b#ray.io_}.ray.io"); done
  kctl label --overwrite "${names[@]}" "tuneforge.local/crds=$sum" >/dev/null
fi
kctl wait --for=condition=Established --timeout=60s crd/rayclusters.ray.io crd/rayjobs.ray.io >/dev/null
sed 's/^  name: kuberay-operator$/  name: "tuneforge:kuberay-operator"/' "$mod/config/rbac/role.yaml" |
  kctl apply --server-side --force-conflicts --field-manager=tuneforge-cluster -f - >/dev/null
kctl apply --server-side --force-conflicts --field-manager=tuneforge-cluster -f - >/dev/null <<'YAML'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: "tuneforge:kuberay-operator"
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "tuneforge:kuberay-operator"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "tuneforge:kuberay-operator"}
YAML
log "kuberay: CRDs ($(basename "$(dirname "$crds")")/$(basename "$crds")) and RBAC applied"
# Host process: it reaches Ray head pods through the API server's proxy (--use-kubernetes-proxy),
# since this host does not resolve cluster DNS names.
start kuberay-operator env KUBECONFIG="$RUN/kubeconfigs/kuberay-operator.kubeconfig" \
  "$TOOLS_BIN/kuberay-operator-$KUBERAY_VERSION" --enable-leader-election=false \
  --metrics-addr=127.0.0.1:18080 --health-probe-bind-address=127.0.0.1:18082 \
  --use-kubernetes-proxy --log-stdout-encoder=console
wait_for "kuberay-operator healthz" 120 kuberay-operator curl -fsS http://127.0.0.1:18082/healthz
