#!/usr/bin/env bash
# Starts a real Kubernetes control plane (etcd and kube-apiserver, no nodes) on loopback for
# artgc's tests, as controller-runtime's envtest does: a self-signed CA, client-certificate
# auth, a service-account signing key (so TokenRequest works) and RBAC authorization.
# Usage: eval "$(.ci/kube.sh start DIR)"   -> exports ARTGC_TEST_KUBECONFIG (an admin),
#        ARTGC_TEST_KUBE_AUDIT (the audit log), KUBE_PIDS
#        .ci/kube.sh stop DIR
# The binaries are built from their published Go modules (testenv/), pinned, once per machine,
# into $ARTGC_TOOLS (default /opt/artgc-tools); the first build prints how long it took.
set -euo pipefail

cmd=${1:?start|stop}
dir=${2:?state directory}
here=$(cd "$(dirname "$0")/.." && pwd)
root=${ARTGC_TOOLS:-/opt/artgc-tools}
k8s_version=v1.34.2
etcd_version=v3.6.6
etcd_port=${KUBE_ETCD_PORT:-39910}
api_port=${KUBE_API_PORT:-39911}

case "$cmd" in
stop)
    pids=""
    for f in "$dir"/*.pid; do
        [ -f "$f" ] && pids="$pids $(cat "$f")"
    done
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    # Both shut down gracefully; wait (up to 20 s) so their ports are free again.
    for _ in $(seq 1 100); do
        alive=""
        for p in $pids; do kill -0 "$p" 2>/dev/null && alive=yes; done
        [ -z "$alive" ] && break
        sleep 0.2
    done
    # An API server whose etcd went first can hang in its graceful shutdown: left running, it
    # would hold the port the next run needs.
    for p in $pids; do kill -9 "$p" 2>/dev/null || true; done
    exit 0
    ;;
start) ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac

build() { # name version module-dir package
    local out="$root/$1-$2/$1"
    if [ ! -x "$out" ]; then
        local start=$SECONDS
        echo "building $1 $2 from testenv/$3 (first time on this machine)" >&2
        mkdir -p "$(dirname "$out")"
        (cd "$here/testenv/$3" && go build -trimpath -o "$out.tmp" "$4") >&2
        mv "$out.tmp" "$out"
        echo "built $1 $2 in $((SECONDS - start)) s" >&2
    fi
    echo "$out"
}

command -v go > /dev/null || { echo "go is not installed" >&2; exit 1; }
command -v openssl > /dev/null || { echo "openssl is not installed" >&2; exit 1; }
etcd=$(build etcd "$etcd_version" etcd .)
apiserver=$(build kube-apiserver "$k8s_version" apiserver k8s.io/kubernetes/cmd/kube-apiserver)

mkdir -p "$dir/pki" "$dir/etcd"
pki=$dir/pki
ssl() { openssl "$@" 2> /dev/null; }
ssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=artgc-test-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt"
sign() { # name subject [SANs]
    ssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr"
    local ext=$pki/$1.ext
    if [ -n "${3:-}" ]; then
        echo "subjectAltName=$3" > "$ext"
    else
        echo "extendedKeyUsage=clientAuth" > "$ext"
    fi
    ssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 2 -extfile "$ext" -out "$pki/$1.crt"
}
sign apiserver "/CN=kube-apiserver" "IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes.default.svc"
sign admin "/O=system:masters/CN=artgc-test-admin"
ssl genrsa -out "$pki/sa.key" 2048
ssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

"$etcd" --data-dir "$dir/etcd" --name artgc-test \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 2))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 2))" \
    --initial-cluster "artgc-test=http://127.0.0.1:$((etcd_port + 2))" \
    --unsafe-no-fsync > "$dir/etcd.log" 2>&1 &
echo $! > "$dir/etcd.pid"

"$apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --secure-port "$api_port" --advertise-address 127.0.0.1 \
    --cert-dir "$pki" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --api-audiences https://kubernetes.default.svc,sts.amazonaws.com \
    --authorization-mode RBAC --service-cluster-ip-range 10.0.0.0/24 \
    --audit-log-path "$dir/audit.log" --audit-policy-file "$here/.ci/kube-audit-policy.yaml" \
    --disable-admission-plugins ServiceAccount > "$dir/apiserver.log" 2>&1 &
echo $! > "$dir/apiserver.pid"

kubeconfig=$dir/kubeconfig
cat > "$kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: artgc-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: artgc-test
  context: {cluster: artgc-test, user: admin, namespace: default}
current-context: artgc-test
YAML

ready=""
for _ in $(seq 1 300); do
    if kubectl --kubeconfig "$kubeconfig" get --raw /readyz > /dev/null 2>&1; then
        ready=yes
        break
    fi
    sleep 0.2
done
if [ -z "$ready" ]; then
    echo "kube-apiserver did not become ready; see $dir/apiserver.log" >&2
    tail -20 "$dir/apiserver.log" >&2
    exit 1
fi
# Argo's own Workflow CRD (its full schema, which prunes what it does not declare) when the
# shared fixtures are there, else our minimal one. Server-side: Argo's is too big for the
# last-applied annotation.
crd=$here/testenv/crds/workflows.yaml
argo_crd=$here/../shared/fixtures/argo/crds/argoproj.io_workflows.yaml
if [ -f "$argo_crd" ]; then
    crd=$argo_crd
fi
echo "Workflow CRD: $crd" >&2
kubectl --kubeconfig "$kubeconfig" apply --server-side -f "$crd" >&2
for _ in $(seq 1 100); do
    kubectl --kubeconfig "$kubeconfig" wait --for condition=established --timeout 10s \
        crd/workflows.argoproj.io > /dev/null 2>&1 && break
    sleep 0.2
done
kubectl --kubeconfig "$kubeconfig" wait --for condition=established --timeout 10s \
    crd/workflows.argoproj.io >&2


echo "export ARTGC_TEST_KUBECONFIG=$kubeconfig"
echo "export ARTGC_TEST_KUBE_AUDIT=$dir/audit.log"
echo "export KUBE_PIDS=\"$(cat "$dir/etcd.pid") $(cat "$dir/apiserver.pid")\""
