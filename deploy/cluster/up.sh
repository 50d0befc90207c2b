#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# `make cluster-up`: a one-node Kubernetes on this machine from project-built, cached binaries.
# Idempotent: what runs already is left alone; binaries come from $CLUSTER_CACHE (built once).
# State, logs and pids live in $RUN (.run/cluster); `make cluster-down` undoes all of it.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, iptables, containerd); run as root or in a VM"
t_start=$(date +%s)
# One cluster per machine: the bridge, the node address and the ports are the machine's. (Probe
# only when the node address is this machine's: otherwise the request would leave the machine.)
if ! running kube-apiserver && grep -q "inet $NODE_IP/" <<<"$(ip -4 addr show)" &&
   curl -sk -m 2 -o /dev/null "https://$NODE_IP:$API_PORT/healthz"; then
  die "another cluster already answers on $NODE_IP:$API_PORT (another checkout? run make cluster-down there)"
fi

# 1. Packages and binaries (cached; each step is a no-op when done).
"$here/install-deps.sh"
"$here/build-kube.sh"
"$here/build-tools.sh"
mkdir -p "$RUN"/{bin,logs,pids,etcd,kubelet,cni/net.d,cni/ipam,containerd,images}
ln -sf "$KUBE_BIN/kubectl" "$RUN/bin/kubectl"
ln -sf "$TOOLS_BIN/helm-$HELM_VERSION" "$RUN/bin/helm"
ln -sf "$TOOLS_BIN/crictl-$CRICTL_VERSION" "$RUN/bin/crictl"
printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 30\n' "$CTR_SOCK" "$CTR_SOCK" >"$RUN/crictl.yaml"

# 2. Kernel settings pods need (forwarding between the bridge's ports, Services seen by iptables
#    on bridged traffic) and the cluster's bridge, whose address is the node's address.
modprobe br_netfilter 2>/dev/null || true
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1 || die "net.bridge.bridge-nf-call-iptables not settable (br_netfilter missing?)"
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link add "$BRIDGE" type bridge
  log "network: bridge $BRIDGE created"
fi
grep -q "inet $NODE_IP/" <<<"$(ip addr show dev "$BRIDGE")" || ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up

# 3. Certificates, tokens, kubeconfigs.
"$here/pki.sh"
pki=$RUN/pki kc=$RUN/kubeconfigs

# 4. etcd (Debian's), loopback only.
start etcd etcd --name tuneforge --data-dir "$RUN/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "tuneforge=http://127.0.0.1:$ETCD_PEER_PORT" --quota-backend-bytes 2147483648
wait_for "etcd health" 60 etcd curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

# 5. kube-apiserver: RBAC + Node authorization, static tokens, on the node's (bridge) address only.
start kube-apiserver "$KUBE_BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$API_PORT" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" --token-auth-file="$pki/tokens.csv" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true \
  --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
  --requestheader-client-ca-file="$pki/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$pki/front-proxy-client.crt" --proxy-client-key-file="$pki/front-proxy-client.key" \
  --profiling=false --cert-dir="$RUN/pki/apiserver-generated" \
  --feature-gates=SizeBasedListCostEstimate=false
# (The size estimate polls etcd in a way Debian's etcd 3.4 times out on, logging every few seconds.)
wait_for "kube-apiserver /readyz" 120 kube-apiserver curl -fsS --cacert "$pki/ca.crt" "https://$NODE_IP:$API_PORT/readyz"

# 6. Controller manager and scheduler, loopback only.
start kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
  --kubeconfig="$kc/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$kc/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$kc/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false \
  --root-ca-file="$pki/ca.crt" --service-account-private-key-file="$pki/sa.key" \
  --use-service-account-credentials=true --service-cluster-ip-range="$SERVICE_CIDR" \
  --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --controllers='*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route' --profiling=false
start kube-scheduler "$KUBE_BIN/kube-scheduler" \
  --kubeconfig="$kc/scheduler.kubeconfig" \
  --authentication-kubeconfig="$kc/scheduler.kubeconfig" \
  --authorization-kubeconfig="$kc/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false --profiling=false

# 7. Add-on identities and the kube-dns Service (CoreDNS runs on the node's address, see 11.).
wait_for "RBAC bootstrap roles" 60 kube-apiserver kctl get clusterrole system:node-proxier
kctl apply --server-side --force-conflicts --field-manager=tuneforge-cluster -f "$here/manifests/rbac.yaml" >/dev/null
sed "s/NODE_IP/$NODE_IP/" "$here/manifests/kube-dns-endpoints.yaml" |
  kctl apply --server-side --force-conflicts --field-manager=tuneforge-cluster -f - >/dev/null

# 8. containerd (Debian's) with its own root, state, socket and CNI configuration.
write_config containerd "$RUN/cni/net.d/10-tuneforge.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "tuneforge",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$RUN/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
write_config containerd "$RUN/containerd/config.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$RUN/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$CTR_SOCK"
[ttrpc]
  address = "$CTR_SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$RUN/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Without CAP_SYS_RESOURCE every sandbox fails ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$RUN/cni/net.d"
EOF
start containerd containerd --config "$RUN/containerd/config.toml"
wait_for "containerd socket" 60 containerd ctr --address "$CTR_SOCK" version

# 9. The pause image: a static C binary FROM scratch under containerd's sandbox_image name.
if ! has_image "$PAUSE_IMAGE"; then
  pause_root=$(mktemp -d)
  gcc -static -Os -s -o "$pause_root/pause" "$here/pause/pause.c"
  "$here/image-archive.sh" "$RUN/images/pause.tar" "$PAUSE_IMAGE" "$pause_root" /pause
  rm -rf "$pause_root"
  ctr --address "$CTR_SOCK" -n k8s.io images import "$RUN/images/pause.tar" >/dev/null
  log "pause image imported as $PAUSE_IMAGE"
fi

# 10. kubelet (cgroupfs driver, webhook authn/authz, serving on the node's address).
write_config kubelet "$RUN/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$CTR_SOCK
clusterDomain: cluster.local
clusterDNS: [10.96.0.10]
podLogsDir: $RUN/kubelet/pod-logs
maxPods: 110
serializeImagePulls: false
# Images are loaded, never pulled: never garbage-collect them (100 turns image GC off). The disk is
# shared with other work, so evict only when it is really full, not at a percentage of a big disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "256Mi", nodefs.available: "2Gi", imagefs.available: "2Gi", nodefs.inodesFree: "5%"}
protectKernelDefaults: false
EOF
start kubelet "$KUBE_BIN/kubelet" --config="$RUN/kubelet/config.yaml" \
  --kubeconfig="$kc/kubelet.kubeconfig" --root-dir="$RUN/kubelet/root" --cert-dir="$RUN/kubelet/pki" \
  --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --pod-infra-container-image="$PAUSE_IMAGE"

# 11. kube-proxy (iptables mode), so ClusterIP Services route.
write_config kube-proxy "$RUN/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: $NODE_NAME
clientConnection: {kubeconfig: $kc/kube-proxy.kubeconfig}
clusterCIDR: $POD_CIDR
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
nodePortAddresses: ["$NODE_IP/32"]
iptables: {localhostNodePorts: false, masqueradeAll: false}
# The sandbox cannot change conntrack table sizes; leave the kernel's settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
start kube-proxy "$KUBE_BIN/kube-proxy" --config="$RUN/kube-proxy.yaml"

# 12. CoreDNS on the node's address, serving cluster.local from the API (kube-dns Service -> it).
write_config coredns "$RUN/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:10254
    ready 127.0.0.1:10253
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $kc/coredns.kubeconfig tuneforge-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
    loop
}
EOF
start coredns "$TOOLS_BIN/coredns-$COREDNS_VERSION" -conf "$RUN/Corefile"

# 13. KubeRay: CRDs (the operator version's own), then the operator as a host process.
"$here/kuberay.sh"

wait_for "node $NODE_NAME Ready" 180 kubelet \
  bash -c "'$KUBE_BIN/kubectl' --kubeconfig '$KUBECONFIG_PATH' get node '$NODE_NAME' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
wait_for "CoreDNS ready" 60 coredns curl -fsS http://127.0.0.1:10253/ready
wait_for "kube-proxy healthz" 60 kube-proxy curl -fsS http://127.0.0.1:10256/healthz
wait_for "default service account" 60 kube-controller-manager kctl -n default get serviceaccount default

log "cluster up in $(( $(date +%s) - t_start )) s: node $NODE_NAME ($NODE_IP), Kubernetes $KUBE_VERSION"
echo "export KUBECONFIG=$KUBECONFIG_PATH PATH=$RUN/bin:\$PATH"
