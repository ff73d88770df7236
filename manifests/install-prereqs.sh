#!/usr/bin/env bash
# Install what one mode of the perf-predictor chart needs on a kind cluster, pinned to releases that
# exist (each checked against the project's tags):
#
#   metrics-server       chart 3.12.2 (metrics-server v0.7.2; HPA on cpu/memory; kind needs --kubelet-insecure-tls)
#   cert-manager         v1.17.2   (KServe's webhook certificates), oci://quay.io/jetstack/charts/cert-manager
#   KServe               v0.16.0 (default) or v0.15.2, CRDs + controller from KServe's OCI charts
#                        oci://ghcr.io/kserve/charts/kserve-crd and .../kserve (chart version = the tag)
#   KEDA                 chart 2.14.2 (KEDA 2.14.0, the version KServe's own quick_install.sh pins)   WITH_KEDA=1
#   kube-prometheus-stack chart 72.9.1 (prometheus-operator v0.82.2), Prometheus in `monitoring`   WITH_PROMETHEUS=1
#   Knative Serving      knative-v1.15.2 + net-kourier knative-v1.15.1                               KSERVE_MODE=Knative
#
# KSERVE_MODE=Standard (default): no Ingress/Gateway (disableIngressCreation); the InferenceService is
# reached through its `<name>-predictor` Service, which is what `helm test` does. KSERVE_MODE=Knative:
# Knative Serving with Kourier as its ingress, KServe without Istio (disableIstioVirtualHost).
# SKIP_KSERVE=1 for the plain `workload=deployment` path.
#
# NOT run in this project's CI (no cluster there). Needs: kubectl, helm (3.8+ for OCI), network access.
set -euo pipefail

METRICS_SERVER_VERSION="${METRICS_SERVER_VERSION:-3.12.2}"   # helm chart 3.12.2 = metrics-server v0.7.2
CERT_MANAGER_VERSION="${CERT_MANAGER_VERSION:-v1.17.2}"
KSERVE_VERSION="${KSERVE_VERSION:-v0.16.0}"
KSERVE_MODE="${KSERVE_MODE:-Standard}"
KEDA_CHART_VERSION="${KEDA_CHART_VERSION:-2.14.2}"            # appVersion 2.14.0
KUBE_PROMETHEUS_STACK_VERSION="${KUBE_PROMETHEUS_STACK_VERSION:-72.9.1}"   # prometheus-operator v0.82.2
KNATIVE_SERVING_VERSION="${KNATIVE_SERVING_VERSION:-knative-v1.15.2}"
KOURIER_VERSION="${KOURIER_VERSION:-knative-v1.15.1}"
HELM="${HELM:-helm}"

echo "== metrics-server chart ${METRICS_SERVER_VERSION}"
"$HELM" upgrade --install metrics-server metrics-server \
  --repo https://kubernetes-sigs.github.io/metrics-server/ \
  --version "${METRICS_SERVER_VERSION}" \
  --namespace kube-system \
  --set 'args={--kubelet-insecure-tls}' \
  --wait --timeout 5m

if [[ "${WITH_PROMETHEUS:-0}" == "1" ]]; then
  # Prometheus at prometheus-operated.monitoring:9090 (the chart's default KEDA serverAddress); it
  # selects monitors labelled release=kube-prometheus-stack, as the chart's ci files label them
  echo "== kube-prometheus-stack chart ${KUBE_PROMETHEUS_STACK_VERSION}"
  "$HELM" upgrade --install kube-prometheus-stack kube-prometheus-stack \
    --repo https://prometheus-community.github.io/helm-charts \
    --version "${KUBE_PROMETHEUS_STACK_VERSION}" \
    --namespace monitoring --create-namespace \
    --set grafana.enabled=false --set alertmanager.enabled=false \
    --set nodeExporter.enabled=false --set kubeStateMetrics.enabled=false \
    --wait --timeout 10m
fi

if [[ "${WITH_KEDA:-0}" == "1" ]]; then
  # before KServe, so its controller finds the ScaledObject API when it starts
  echo "== KEDA chart ${KEDA_CHART_VERSION}"
  "$HELM" upgrade --install keda keda \
    --repo https://kedacore.github.io/charts \
    --version "${KEDA_CHART_VERSION}" \
    --namespace keda --create-namespace \
    --wait --timeout 10m
fi

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

kserve_args=()
if [[ "$KSERVE_MODE" == "Knative" ]]; then
  echo "== Knative Serving ${KNATIVE_SERVING_VERSION} + Kourier ${KOURIER_VERSION}"
  base="https://github.com/knative/serving/releases/download/${KNATIVE_SERVING_VERSION}"
  kubectl apply -f "${base}/serving-crds.yaml"
  kubectl wait --for=condition=Established --all crd --timeout=2m
  kubectl apply -f "${base}/serving-core.yaml"
  kubectl apply -f "https://github.com/knative-extensions/net-kourier/releases/download/${KOURIER_VERSION}/kourier.yaml"
  kubectl patch configmap/config-network -n knative-serving --type merge \
    -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
  kubectl -n knative-serving rollout status deployment --timeout=5m
  kubectl -n kourier-system rollout status deployment --timeout=5m
  # KServe 0.15 calls the mode Serverless, 0.16+ Knative
  if [[ "$KSERVE_VERSION" == v0.15.* ]]; then mode=Serverless; else mode=Knative; fi
  kserve_args+=(--set "kserve.controller.deploymentMode=${mode}"
                --set kserve.controller.gateway.disableIstioVirtualHost=true)
else
  if [[ "$KSERVE_VERSION" == v0.15.* ]]; then mode=RawDeployment; else mode=Standard; fi
  kserve_args+=(--set "kserve.controller.deploymentMode=${mode}"
                --set kserve.controller.gateway.disableIngressCreation=true)
fi

echo "== KServe CRDs ${KSERVE_VERSION}"
"$HELM" upgrade --install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd \
  --version "${KSERVE_VERSION}" \
  --namespace kserve --create-namespace \
  --wait --timeout 5m

echo "== KServe controller ${KSERVE_VERSION} (${mode} mode)"
"$HELM" upgrade --install kserve oci://ghcr.io/kserve/charts/kserve \
  --version "${KSERVE_VERSION}" \
  --namespace kserve \
  "${kserve_args[@]}" \
  --set kserve.controller.gateway.ingressGateway.enableGatewayApi=false \
  --wait --timeout 10m

kubectl -n kserve rollout status deployment/kserve-controller-manager --timeout=5m
echo "prerequisites installed"
