#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# `make cluster-down`: stops every process cluster-up started and removes what it created on the
# host (pod sandboxes and their network namespaces, mounts, iptables chains, the bridge, kubelet
# cgroups, the cluster's state). Loaded images stay in containerd's root ($CONTAINERD_ROOT, outside
# the checkout) for the next cluster-up, from any clone; `down.sh --purge` (make cluster-clean)
# removes them too. Safe to run when nothing runs.
set -uo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
purge=""; [ "${1:-}" = "--purge" ] && purge=1
if [ ! -d "$RUN" ]; then
  [ -n "$purge" ] && rm -rf "$CONTAINERD_ROOT" && log "purged $CONTAINERD_ROOT"
  log "nothing to stop ($RUN does not exist)"; exit 0
fi

# 1. Whatever would recreate pods goes first, then the kubelet.
for p in kuberay-operator coredns kube-scheduler kube-controller-manager kubelet; do stop "$p"; done

# 2. Pod sandboxes: stopping them through the CRI runs CNI DEL (veths, IPs, network namespaces).
if running containerd; then
  crictl=$TOOLS_BIN/crictl-$CRICTL_VERSION
  if [ -x "$crictl" ]; then
    timeout 120 "$crictl" --config "$RUN/crictl.yaml" rmp --all --force >/dev/null 2>&1 ||
      log "crictl rmp failed; continuing with the raw clean-up"
  fi
fi
stop kube-proxy
stop containerd 30
# Shims of this containerd (started with its socket as -address) and their containers, if any left.
for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $CTR_SOCK" 2>/dev/null); do
  log "killing leftover shim $pid"; kill -KILL "$pid" 2>/dev/null || true
done
stop kube-apiserver
stop etcd

# 3. iptables: kube-proxy's own clean-up, then any KUBE-* chain left (kubelet's canaries, firewall).
"$KUBE_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
for ipt in iptables ip6tables; do
  command -v "$ipt" >/dev/null || continue
  for table in filter nat mangle; do
    "$ipt" -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-' | grep -vE '^-A KUBE-' |
      while read -r rule; do eval "$ipt -t $table ${rule/-A/-D}" 2>/dev/null || true; done
    chains=$("$ipt" -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[A-Za-z0-9_-]*\)$/\1/p')
    for c in $chains; do "$ipt" -t "$table" -F "$c" 2>/dev/null; done
    for c in $chains; do "$ipt" -t "$table" -X "$c" 2>/dev/null; done
  done
done

# 4. Mounts under the run folder (kubelet volumes, containerd rootfs/shm), deepest first.
findmnt -rn -o TARGET 2>/dev/null | grep -F -e "$RUN/" -e "$CONTAINERD_ROOT/" | sort -r | while read -r m; do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
done
# Network namespaces of pods (containerd names them cni-*) that no process uses any more.
for ns in /run/netns/cni-*; do
  [ -e "$ns" ] || continue
  if [ -z "$(ip netns pids "$(basename "$ns")" 2>/dev/null)" ]; then
    ip netns delete "$(basename "$ns")" 2>/dev/null || { umount "$ns" 2>/dev/null; rm -f "$ns"; }
  fi
done
# The kubelet's links to container logs (/var/log/containers is fixed) that point into this cluster.
for l in /var/log/containers/*.log; do
  [ -L "$l" ] && [[ "$(readlink "$l")" == "$RUN/"* ]] && rm -f "$l"
done
# 5. The bridge (pods' veths went with their sandboxes) and the kubelet's cgroups.
ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE" && log "network: bridge $BRIDGE deleted"
for ctl in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
  [ -d "$ctl" ] && find "$ctl" -depth -type d -exec rmdir {} \; 2>/dev/null
done

# 6. State (a second cluster-up starts clean); images stay unless --purge.
rm -rf "$RUN"/{etcd,pki,kubeconfigs,kubelet,cni,pids,kubeconfig,containerd/state,containerd/opt}
if [ -n "$purge" ]; then rm -rf "$RUN" "$CONTAINERD_ROOT"; log "purged $RUN and $CONTAINERD_ROOT (images included)"; fi
log "cluster down"
