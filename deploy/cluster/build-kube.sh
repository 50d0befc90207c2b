#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds the Kubernetes node/control-plane binaries (and kubectl) of KUBE_VERSION from the Go module
# proxy into the cache, once per machine: $CLUSTER_CACHE/<version>/bin. Idempotent: binaries
# already cached are kept. `go install k8s.io/kubernetes/cmd/...@v` refuses the module (its go.mod
# replaces the k8s.io/* staging modules with ./staging paths), so a small wrapper module requires
# k8s.io/kubernetes and replaces each staging module with its published v0.x.y instead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
CLUSTER_CACHE=${CLUSTER_CACHE:-$HOME/.cache/tuneforge/cluster}
need_go() { command -v go >/dev/null || { echo "Go (1.26 for helm $HELM_VERSION, 1.24 for the rest) is needed to build the cluster's binaries once" >&2; exit 1; }; }
out=$CLUSTER_CACHE/$KUBE_VERSION/bin
mod=$CLUSTER_CACHE/$KUBE_VERSION/src
cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
[ $# -gt 0 ] && cmds=("$@")

missing=()
for c in "${cmds[@]}"; do [ -x "$out/$c" ] || missing+=("$c"); done
if [ ${#missing[@]} -eq 0 ]; then echo "kubernetes $KUBE_VERSION: all binaries cached in $out"; exit 0; fi
need_go
mkdir -p "$out" "$mod"

if [ ! -f "$mod/go.sum" ] || [ ! -f "$mod/.tidy" ]; then
  echo "kubernetes $KUBE_VERSION: preparing the wrapper module in $mod"
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  {
    echo "module tuneforge.local/kubebuild"
    echo
    echo "go $(sed -n 's/^go //p' "$gomod")"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$KUBE_STAGING_VERSION"'#p' "$gomod"
  } >"$mod/go.mod"
  n=$(grep -c '^replace' "$mod/go.mod")
  [ "$n" -gt 20 ] || { echo "expected ~31 staging replaces, found $n" >&2; exit 1; }
  cat >"$mod/tools.go" <<'GO'
//go:build tools

package kubebuild

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  (cd "$mod" && go mod tidy)
  touch "$mod/.tidy"
fi

minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
for c in "${missing[@]}"; do
  t0=$(date +%s)
  echo "kubernetes $KUBE_VERSION: building $c (the first, kube-apiserver, takes ~12 min cold)"
  (cd "$mod" && CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$out/$c.tmp" "k8s.io/kubernetes/cmd/$c")
  mv "$out/$c.tmp" "$out/$c"
  echo "kubernetes $KUBE_VERSION: built $c in $(( $(date +%s) - t0 )) s"
done
