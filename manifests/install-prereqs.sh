#!/usr/bin/env bash
# Install what the perf-predictor chart needs on a kind cluster, pinned:
#
#   metrics-server   v0.7.2   (HPA on cpu/memory; kind needs --kubelet-insecure-tls)
#   cert-manager     v1.17.2  (KServe's webhook certificates), chart oci://quay.io/jetstack/charts/cert-manager
#   KServe           v0.16.1  CRDs + controller in Standard mode (no Knative, no Istio), from KServe's
#                             published OCI charts oci://ghcr.io/kserve/charts/kserve-crd and .../kserve
#
# KServe Standard mode on kind: no Ingress/Gateway is created (disableIngressCreation), the
# InferenceService is reached through its `<name>-predictor` Service inside the cluster, which is
# what `helm test` does. Set SKIP_KSERVE=1 for the plain `workload=deployment` path.
#
# NOT run in this project's CI (no cluster there). Needs: kubectl, helm (3.8+ for OCI), network access.
set -euo pipefail

METRICS_SERVER_VERSION="${METRICS_SERVER_VERSION:-3.12.2}"   # helm chart 3.12.2 = metrics-server v0.7.2
CERT_MANAGER_VERSION="${CERT_MANAGER_VERSION:-v1.17.2}"
KSERVE_VERSION="${KSERVE_VERSION:-v0.16.1}"
HELM="${HELM:-helm}"

echo "== metrics-server chart ${METRICS_SERVER_VERSION}"
"$HELM" upgrade --install metrics-server metrics-server \
  --repo https://kubernetes-sigs.github.io/metrics-server/ \
  --version "${METRICS_SERVER_VERSION}" \
  --namespace kube-system \
  --set 'args={--kubelet-insecure-tls}' \
  --wait --timeout 5m

if [[ "${SKIP_KSERVE:-0}" == "1" ]]; then
  echo "SKIP_KSERVE=1: cert-manager and KServe not installed"
  exit 0
fi

echo "== cert-manager ${CERT_MANAGER_VERSION}"
"$HELM" upgrade --install cert-manager oci://quay.io/jetstack/charts/cert-manager \
  --version "${CERT_MANAGER_VERSION}" \
  --namespace cert-manager --create-namespace \
  --set crds.enabled=true \
  --wait --timeout 10m

echo "== KServe CRDs ${KSERVE_VERSION}"
"$HELM" upgrade --install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd \
  --version "${KSERVE_VERSION}" \
  --namespace kserve --create-namespace \
  --wait --timeout 5m

echo "== KServe controller ${KSERVE_VERSION} (Standard mode)"
"$HELM" upgrade --install kserve oci://ghcr.io/kserve/charts/kserve \
  --version "${KSERVE_VERSION}" \
  --namespace kserve \
  --set kserve.controller.deploymentMode=Standard \
  --set kserve.controller.gateway.disableIngressCreation=true \
  --set kserve.controller.gateway.ingressGateway.enableGatewayApi=false \
  --wait --timeout 10m

kubectl -n kserve rollout status deployment/kserve-controller-manager --timeout=5m
echo "prerequisites installed"
