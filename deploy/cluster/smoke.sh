#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Proves a running cluster (KUBECONFIG, default .run/cluster/kubeconfig) does what the chart needs:
#  1. an image built here (podman, else a docker-archive written by image-archive.sh) is loaded into
#     containerd and runs as a non-root pod with a read-only root;
#  2. another pod reaches it through a ClusterIP Service by DNS name (FQDN and short name);
#  3. kubectl logs, exec and port-forward work against the pod;
#  4. KubeRay reconciles a RayCluster into a head pod, a worker pod and the head Service, and, when a
#     Ray image is loaded (RAY_IMAGE, default: the chart's ml image localhost/tuneforge-ml:<tag> if one
#     is in containerd), that the RayCluster gets ready.
# Exits non-zero on the first failure. KEEP=1 leaves the tf-smoke namespace for inspection.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
export KUBECONFIG=${KUBECONFIG:-$KUBECONFIG_PATH}
k() { "$KUBE_BIN/kubectl" "$@"; }
ns=tf-smoke image=localhost/tuneforge-smoke:1
running containerd || die "the local cluster is not running (make cluster-up)"
loaded=$(images)
RAY_IMAGE=${RAY_IMAGE:-$(grep -m1 '^localhost/tuneforge-ml:' <<<"$loaded" || echo localhost/tuneforge-ml:0.1.0)}
t0=$(date +%s)
step() { log "smoke: $*"; }

# 1. The image.
pf=""
work=$(mktemp -d); trap 'if [ -n "$pf" ]; then kill "$pf" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
mkdir "$work/rootfs"
(cd "$here/smoke" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$work/rootfs/smoke" main.go)
if command -v podman >/dev/null && [ -z "${SMOKE_NO_PODMAN:-}" ] &&
   ${CONTAINER_ENGINE:-podman} build -q --format docker --pull=never -t "$image" -f "$here/smoke/Containerfile" "$work/rootfs" >/dev/null 2>"$work/build.err"; then
  step "image $image built with podman; loading it with load-image.sh"
  "$here/load-image.sh" "$image"
else
  [ -s "$work/build.err" ] && { step "podman build failed, writing the archive directly:"; cat "$work/build.err" >&2; }
  "$here/image-archive.sh" "$work/smoke.tar" "$image" "$work/rootfs" /smoke
  ctr --address "$CTR_SOCK" -n k8s.io images import "$work/smoke.tar" >/dev/null
  step "image $image imported into containerd from a docker-archive"
fi

# 2. A server pod behind a ClusterIP Service, and a client pod that reaches it by name.
k delete namespace "$ns" --ignore-not-found --wait=true --timeout=120s >/dev/null
k create namespace "$ns" >/dev/null
pod() {  # NAME RESTART-POLICY ARGS-JSON [LABEL]
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $ns, labels: {app: $1}}
spec:
  restartPolicy: $2
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: main
    image: $image
    imagePullPolicy: Never
    args: $3
    resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {memory: 64Mi}}
    securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
EOF
}
{ pod web Always '["serve", ":8080"]'; cat <<EOF
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: $ns}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
EOF
} | k apply -f - >/dev/null
k -n "$ns" wait --for=condition=Ready pod/web --timeout=120s >/dev/null
step "pod web Ready on $(k -n "$ns" get pod web -o jsonpath='{.status.podIP}'), Service web at $(k -n "$ns" get svc web -o jsonpath='{.spec.clusterIP}')"
pod client Never "[\"get\", \"http://web.$ns.svc.cluster.local/\", \"60\"]" | k apply -f - >/dev/null
pod client-short Never '["get", "http://web/", "60"]' | k apply -f - >/dev/null
for c in client client-short; do
  k -n "$ns" wait --for=jsonpath='{.status.phase}'=Succeeded "pod/$c" --timeout=120s >/dev/null || {
    k -n "$ns" logs "$c" >&2 || true; die "pod $c did not reach the Service"; }
  out=$(k -n "$ns" logs "$c")
  grep -q "hello from web" <<<"$out" || die "pod $c: unexpected answer: $out"
  step "kubectl logs $c: $(grep 'hello' <<<"$out")"
done

# 3. logs, exec, port-forward on the server.
grep -q "request GET /" <<<"$(k -n "$ns" logs web)" || die "kubectl logs web shows no request"
step "kubectl logs web: $(k -n "$ns" logs web | grep -c 'request GET') requests logged"
out=$(k -n "$ns" exec web -- /smoke get http://127.0.0.1:8080/ 5)
grep -q "hello from web" <<<"$out" || die "kubectl exec: $out"
step "kubectl exec web: $out"
port=18089
"$KUBE_BIN/kubectl" -n "$ns" port-forward pod/web "$port:8080" >"$work/pf.log" 2>&1 &
pf=$!
ok=""
for _ in $(seq 1 40); do
  if out=$(curl -fsS "http://127.0.0.1:$port/" 2>/dev/null); then ok=1; break; fi
  kill -0 "$pf" 2>/dev/null || break
  sleep 0.5
done
kill "$pf" 2>/dev/null; wait "$pf" 2>/dev/null || true; pf=""
[ -n "$ok" ] || { cat "$work/pf.log" >&2; die "kubectl port-forward did not answer"; }
step "kubectl port-forward: $out"

# 4. KubeRay: a minimal RayCluster.
if has_image "$RAY_IMAGE"; then have_ray=1; else have_ray=""; fi
ray_group() {  # CONTAINER-NAME
  cat <<EOF
      spec:
        containers:
        - name: $1
          image: $RAY_IMAGE
          imagePullPolicy: Never
          resources: {requests: {cpu: 200m, memory: 1Gi}, limits: {cpu: "1", memory: 2Gi}}
EOF
}
{ cat <<EOF
apiVersion: ray.io/v1
kind: RayCluster
metadata: {name: smoke, namespace: $ns}
spec:
  headGroupSpec:
    rayStartParams: {num-cpus: "0"}
    template:
EOF
  ray_group ray-head
  cat <<EOF
  workerGroupSpecs:
  - groupName: cpu
    replicas: 1
    minReplicas: 1
    maxReplicas: 1
    rayStartParams: {num-cpus: "1"}
    template:
EOF
  ray_group ray-worker
} | k apply -f - >/dev/null
sel="ray.io/cluster=smoke"
wait_for "KubeRay head pod" 120 kuberay-operator \
  bash -c "'$KUBE_BIN/kubectl' -n $ns get pods -l $sel,ray.io/node-type=head -o name | grep -q pod/"
wait_for "KubeRay worker pod" 120 kuberay-operator \
  bash -c "'$KUBE_BIN/kubectl' -n $ns get pods -l $sel,ray.io/node-type=worker -o name | grep -q pod/"
wait_for "KubeRay head Service" 60 kuberay-operator \
  bash -c "'$KUBE_BIN/kubectl' -n $ns get svc -l $sel,ray.io/node-type=head -o name | grep -q service/"
head=$(k -n "$ns" get pods -l "$sel,ray.io/node-type=head" -o jsonpath='{.items[0].metadata.name}')
cmd=$(k -n "$ns" get pod "$head" -o jsonpath='{.spec.containers[0].args}')
grep -q "ray start --head" <<<"$cmd" || die "head pod $head does not run 'ray start --head': $cmd"
step "KubeRay made head pod $head ($(k -n "$ns" get pod "$head" -o jsonpath='{.spec.containers[0].image}'), 'ray start --head'), a worker pod and Service $(k -n "$ns" get svc -l "$sel,ray.io/node-type=head" -o jsonpath='{.items[0].metadata.name}')"
if [ -n "$have_ray" ]; then
  k -n "$ns" wait --for=jsonpath='{.status.state}'=ready raycluster/smoke --timeout=300s >/dev/null ||
    die "RayCluster smoke not ready: $(k -n "$ns" get pods -o wide)"
  step "RayCluster smoke ready: $(k -n "$ns" get raycluster smoke -o jsonpath='{.status.availableWorkerReplicas}') worker(s) available"
  # The worker joined the head through the head Service's DNS name: Ray itself counts both nodes.
  out=$(k -n "$ns" exec "$head" -- python -c "import ray; ray.init(address='auto', logging_level='ERROR'); print('alive Ray nodes:', sum(n['Alive'] for n in ray.nodes()))" 2>&1 | tail -n1)
  [ "$out" = "alive Ray nodes: 2" ] || die "Ray on the head does not see head + worker: $out"
  step "Ray on the head: $out (worker joined via $(k -n "$ns" get pods -l "$sel,ray.io/node-type=worker" -o jsonpath='{.items[0].spec.containers[0].args}' | grep -o 'address=[^ ]*'))"
else
  step "no Ray image $RAY_IMAGE in containerd: checked reconciliation only (pods cannot start: $(k -n "$ns" get pod "$head" -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}'))"
fi

if [ -z "${KEEP:-}" ]; then k delete namespace "$ns" --wait=false >/dev/null; fi
step "passed in $(( $(date +%s) - t0 )) s"
