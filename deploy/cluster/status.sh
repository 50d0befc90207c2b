#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Which cluster processes run, then the node and the pods.
set -uo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
for p in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy coredns kuberay-operator; do
  if running "$p"; then printf '  %-24s running (pid %s)\n' "$p" "$(cat "$RUN/pids/$p.pid")"
  else printf '  %-24s stopped\n' "$p"; fi
done
if running kube-apiserver; then kctl get nodes -o wide; kctl get pods -A -o wide; fi
echo "export KUBECONFIG=$KUBECONFIG_PATH PATH=$RUN/bin:\$PATH"
