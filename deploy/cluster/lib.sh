# Shared settings and helpers of deploy/cluster/*.sh (sourced, not run).
# shellcheck shell=bash source-path=SCRIPTDIR disable=SC2034
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$here/../.." && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
CLUSTER_CACHE=${CLUSTER_CACHE:-$HOME/.cache/tuneforge/cluster}
KUBE_BIN=$CLUSTER_CACHE/$KUBE_VERSION/bin
TOOLS_BIN=$CLUSTER_CACHE/tools
RUN=${CLUSTER_RUN:-$ROOT/.run/cluster}

# The cluster's own network: one bridge; its address is the node's address (the API server, the
# kubelet and cluster DNS listen there and on loopback only), pods get the rest of the /24.
BRIDGE=${CLUSTER_BRIDGE:-tfbr0}
NODE_IP=${CLUSTER_NODE_IP:-10.244.0.1}
POD_CIDR=${CLUSTER_POD_CIDR:-10.244.0.0/24}
SERVICE_CIDR=${CLUSTER_SERVICE_CIDR:-10.96.0.0/16}
SERVICE_API_IP=10.96.0.1
NODE_NAME=${CLUSTER_NODE_NAME:-tuneforge-node}
API_PORT=${CLUSTER_API_PORT:-6443}
ETCD_PORT=${CLUSTER_ETCD_PORT:-23790}
ETCD_PEER_PORT=$((ETCD_PORT + 10))
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1
CNI_BIN=/usr/lib/cni
KUBECONFIG_PATH=$RUN/kubeconfig
CTR_SOCK=$RUN/containerd/containerd.sock
# containerd's root (image content and unpacked layers) outlives the checkout: a fresh clone's
# cluster-up finds the images an earlier one loaded (one cluster per machine: one root).
CONTAINERD_ROOT=${CLUSTER_CONTAINERD_ROOT:-$CLUSTER_CACHE/containerd-root}

log() { printf '[cluster %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

# running NAME: true when the process recorded in $RUN/pids/NAME.pid is alive and is NAME (after a
# reboot the pid may belong to something else).
running() {
  local f=$RUN/pids/$1.pid pid cmd
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ "$cmd" == *"$1"* ]]
}

# start NAME CMD...: starts CMD in its own session, output to $RUN/logs/NAME.log, unless running.
start() {
  local name=$1; shift
  if running "$name"; then log "$name: already running (pid $(cat "$RUN/pids/$name.pid"))"; return 0; fi
  mkdir -p "$RUN/pids" "$RUN/logs"
  setsid "$@" >>"$RUN/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/pids/$name.pid"
  log "$name: started (pid $!, log $RUN/logs/$name.log)"
}

# alive NAME: the process this run just started (its pid file is fresh) has not exited. Unlike
# `running` it does not look at the command line: right after `start`, under load, the child may not
# have exec'ed NAME yet (its command line is still the launching shell's), which is not death.
alive() {
  local f=$RUN/pids/$1.pid
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

# wait_for WHAT TIMEOUT-S NAME CMD...: polls CMD until it succeeds; fails early if NAME died.
wait_for() {
  local what=$1 timeout=$2 name=$3; shift 3
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$name" ] && ! alive "$name"; then
      tail -n 30 "$RUN/logs/$name.log" >&2 || true
      die "$name exited while waiting for $what (log: $RUN/logs/$name.log)"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || { [ -n "$name" ] && tail -n 30 "$RUN/logs/$name.log" >&2; die "timed out after ${timeout}s waiting for $what"; }
    sleep 0.5
  done
}

# stop NAME [TIMEOUT-S]: SIGTERM, then SIGKILL, the process recorded for NAME (and its session).
stop() {
  local name=$1 timeout=${2:-20} f=$RUN/pids/$1.pid pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if running "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$(( $(date +%s) + timeout ))
    while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then log "$name: did not stop in ${timeout}s, killing"; kill -KILL "$pid" 2>/dev/null || true; fi
    log "$name: stopped"
  fi
  rm -f "$f"
}

# Output is read whole before grep (with pipefail, `cmd | grep -q` fails when grep exits first).
kctr() { ctr --address "$CTR_SOCK" -n k8s.io "$@"; }  # the cluster's containerd, Kubernetes' namespace
images() { kctr images ls -q; }
has_image() { local l; l=$(images) || return 1; grep -qx -- "$1" <<<"$l"; }

kctl() { "$KUBE_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
mkdir -p "${TMPDIR:-/tmp}"

# write_config NAME PATH: writes stdin to PATH only when the content differs, so that a second
# cluster-up does not touch files that running components watch (kube-proxy exits on a change);
# when it does differ and NAME runs, NAME is stopped so that the following `start` applies it.
write_config() {
  local name=$1 path=$2 tmp; tmp=$(mktemp)
  cat >"$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path"; then rm -f "$tmp"; return 0; fi
  mv "$tmp" "$path"; chmod 644 "$path"
  if running "$name"; then log "$name: configuration changed, restarting"; stop "$name"; fi
}
