#!/usr/bin/env bash
# Lints and renders the chart over a matrix of values and applies each render to the real API
# server with a server-side dry run. Usage: .ci/helm-matrix.sh KUBECONFIG (ARTGC_HELM set).
set -euo pipefail
cd "$(dirname "$0")/.."
# A copy of the kubeconfig whose default namespace is the release's: rendered objects without a
# namespace go there, those with one (namespaced RBAC) where they say.
kc=$(mktemp)
trap 'rm -f "$kc"' EXIT
cp "${1:?kubeconfig}" "$kc"
kubectl --kubeconfig "$kc" config set-context --current --namespace artgc-helm > /dev/null
k() { kubectl --kubeconfig "$kc" "$@"; }
chart=deploy/helm/artgc
k apply -f testenv/crds/servicemonitors.yaml -f testenv/crds/prometheusrules.yaml > /dev/null
k wait --for condition=established --timeout 60s crd/servicemonitors.monitoring.coreos.com \
    crd/prometheusrules.monitoring.coreos.com > /dev/null
for ns in artgc-helm team-a argo; do
    k get namespace "$ns" > /dev/null 2>&1 || k create namespace "$ns" > /dev/null
done
matrix=(
    "defaults|"
    "namespaced RBAC (and Argo's database Secret)|--set rbac.scope=namespaced --set controller.namespaces={team-a} --set controller.argoDatabaseSecrets={argo-postgres-config}"
    "leader election off|--set controller.leaderElection.enabled=false"
    "ServiceMonitor, PrometheusRule, NetworkPolicy, PDB, dashboard|--set serviceMonitor.enabled=true --set prometheusRule.enabled=true --set prometheusRule.labels.release=prometheus --set networkPolicy.enabled=true --set podDisruptionBudget.enabled=true --set dashboard.enabled=true"
    "service-account identity for team-a|--set serviceAccountIdentity.enabled=true --set serviceAccountIdentity.namespaces.team-a={gc}"
)
for row in "${matrix[@]}"; do
    name=${row%%|*}
    args=${row#*|}
    echo "-- $name"
    # shellcheck disable=SC2086
    "$ARTGC_HELM" lint "$chart" $args > /dev/null
    # shellcheck disable=SC2086
    "$ARTGC_HELM" template artgc "$chart" --namespace artgc-helm $args \
        | k apply --dry-run=server -f - 2>&1 | grep -v '^Warning: .*last-applied-configuration' | sed 's/^/   /'
done
