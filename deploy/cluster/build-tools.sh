#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds the Go tools the local cluster needs (CoreDNS, the KubeRay operator, helm, crictl) with
# `go install` at pinned versions into $CLUSTER_CACHE/tools/<name>-<version>, once per machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
CLUSTER_CACHE=${CLUSTER_CACHE:-$HOME/.cache/tuneforge/cluster}
need_go() { command -v go >/dev/null || { echo "Go (1.26 for helm $HELM_VERSION, 1.24 for the rest) is needed to build the cluster's binaries once" >&2; exit 1; }; }
dest=$CLUSTER_CACHE/tools
mkdir -p "$dest"
# name version module-path binary-name
tools=(
  "coredns $COREDNS_VERSION github.com/coredns/coredns coredns"
  "kuberay-operator $KUBERAY_VERSION github.com/ray-project/kuberay/ray-operator ray-operator"
  "helm $HELM_VERSION helm.sh/helm/v4/cmd/helm helm"
  "crictl $CRICTL_VERSION sigs.k8s.io/cri-tools/cmd/crictl crictl"
)
only=("$@")
for t in "${tools[@]}"; do
  read -r name version module bin <<<"$t"
  if [ ${#only[@]} -gt 0 ] && [[ ! " ${only[*]} " == *" $name "* ]]; then continue; fi
  target=$dest/$name-$version
  [ -x "$target" ] && { echo "$name $version: cached"; continue; }
  need_go
  t0=$(date +%s)
  echo "$name $version: building $module (once per machine)"
  tmp=$(mktemp -d "$dest/.build-XXXXXX")
  CGO_ENABLED=0 GOBIN=$tmp nice -n 10 go install -trimpath -ldflags '-s -w' "$module@$version"
  mv "$tmp/$bin" "$target"; rmdir "$tmp"
  echo "$name $version: built in $(( $(date +%s) - t0 )) s"
done
