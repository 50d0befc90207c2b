#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Certificates, service-account keys, tokens and kubeconfigs of the local cluster, in $RUN/pki and
# $RUN/kubeconfigs (once per cluster; cluster-down removes them with the rest of the state).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

pki=$RUN/pki kc=$RUN/kubeconfigs
mkdir -p "$pki" "$kc"
chmod 700 "$pki"
if [ -f "$pki/.done" ]; then exit 0; fi
log "pki: new CA, serving and client certificates, tokens"
cd "$pki"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
  -subj "/CN=tuneforge-local-ca" 2>/dev/null
# API server serving certificate: its addresses and the in-cluster names of the kubernetes Service.
cat >apiserver.ext <<EOF
subjectAltName=IP:$NODE_IP,IP:127.0.0.1,IP:$SERVICE_API_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
EOF
openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 \
  -extfile apiserver.ext 2>/dev/null
# The kubelet's serving certificate (logs, exec, port-forward go API server -> kubelet).
printf 'subjectAltName=IP:%s,DNS:%s\nextendedKeyUsage=serverAuth\n' "$NODE_IP" "$NODE_NAME" >kubelet.ext
openssl req -newkey rsa:2048 -nodes -keyout kubelet.key -out kubelet.csr -subj "/CN=system:node:$NODE_NAME/O=system:nodes" 2>/dev/null
openssl x509 -req -in kubelet.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out kubelet.crt -days 3650 -extfile kubelet.ext 2>/dev/null
# The API server's client certificate towards the kubelet.
printf 'extendedKeyUsage=clientAuth\n' >client.ext
openssl req -newkey rsa:2048 -nodes -keyout apiserver-kubelet-client.key -out apiserver-kubelet-client.csr \
  -subj "/CN=kube-apiserver-kubelet-client/O=system:masters" 2>/dev/null
openssl x509 -req -in apiserver-kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
  -out apiserver-kubelet-client.crt -days 3650 -extfile client.ext 2>/dev/null
# The front proxy (aggregation layer) CA and client: controller manager and scheduler authenticate
# delegated requests against it.
openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt -days 3650 \
  -subj "/CN=tuneforge-front-proxy-ca" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout front-proxy-client.key -out front-proxy-client.csr -subj "/CN=front-proxy-client" 2>/dev/null
openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key -CAcreateserial \
  -out front-proxy-client.crt -days 3650 -extfile client.ext 2>/dev/null
# Service-account token signing keys.
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
rm -f ./*.csr ./*.ext

# Static bearer tokens (--token-auth-file): one identity per component, RBAC decides the rest.
: >tokens.csv
chmod 600 tokens.csv
token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
kubeconfig() {  # NAME USER TOKEN
  cat >"$kc/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tuneforge-local
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    token: $3
contexts:
- name: tuneforge-local
  context: {cluster: tuneforge-local, user: $2}
current-context: tuneforge-local
EOF
  chmod 600 "$kc/$1.kubeconfig"
}
add() {  # NAME USER GROUPS
  local t; t=$(token)
  printf '%s,%s,%s,"%s"\n' "$t" "$2" "$2" "$3" >>tokens.csv
  kubeconfig "$1" "$2" "$t"
}
add admin tuneforge-admin system:masters
add controller-manager system:kube-controller-manager ""
add scheduler system:kube-scheduler ""
add kubelet "system:node:$NODE_NAME" system:nodes
add kube-proxy system:kube-proxy ""
add coredns tuneforge:coredns ""
add kuberay-operator tuneforge:kuberay-operator ""
cp "$kc/admin.kubeconfig" "$KUBECONFIG_PATH"
chmod 600 "$KUBECONFIG_PATH"
touch .done
