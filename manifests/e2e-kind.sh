#!/usr/bin/env bash
# End-to-end test on kind: create the cluster, install the prerequisites, build and load
# the image, `helm install` the chart and run `helm test` (one real v2 inference request).
#
# NOT run in this project's own CI (no Docker, kind or cluster there). Run it locally with
# `make e2e-kind`, or in .github/workflows/e2e-kind.yml on a runner that has Docker and kind.
#
# Env: WORKLOAD      inferenceService (default, needs KServe) or deployment (plain, no KServe)
#      IMAGE         image reference to build and load (default perf-predictor:e2e)
#      SKIP_BUILD=1  reuse an image already present in the local Docker daemon
#      KEEP=1        keep the cluster afterwards (default: keep; set KEEP=0 to delete)
#      KIND_CLUSTER, KIND_NODE_IMAGE  see kind-up.sh
set -euo pipefail
cd "$(dirname "$0")/.."

WORKLOAD="${WORKLOAD:-inferenceService}"
IMAGE="${IMAGE:-perf-predictor:e2e}"
KIND_CLUSTER="${KIND_CLUSTER:-perf-predictor}"
NAMESPACE="${NAMESPACE:-perf-predictor}"
HELM="${HELM:-helm}"
export KIND_CLUSTER HELM

bash manifests/kind-up.sh

if [[ "$WORKLOAD" == "deployment" ]]; then
  SKIP_KSERVE=1 bash manifests/install-prereqs.sh
else
  bash manifests/install-prereqs.sh
fi

if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
  if [[ -f scripts/build-image.sh ]]; then
    IMAGE="$IMAGE" TARGET=runtime bash scripts/build-image.sh   # the project's `make image`
  else
    docker build --target runtime -t "$IMAGE" .
  fi
fi
kind load docker-image "$IMAGE" --name "$KIND_CLUSTER"

repo="${IMAGE%:*}"; tag="${IMAGE##*:}"
"$HELM" upgrade --install perf-predictor charts/perf-predictor \
  --namespace "$NAMESPACE" --create-namespace \
  --set workload="$WORKLOAD" \
  --set image.repository="$repo" --set image.tag="$tag" --set image.pullPolicy=Never \
  --wait --timeout 10m

if [[ "$WORKLOAD" == "inferenceService" ]]; then
  kubectl -n "$NAMESPACE" wait --for=condition=Ready inferenceservice/perf-predictor --timeout=10m
fi

status=0
"$HELM" test perf-predictor --namespace "$NAMESPACE" --logs --timeout 5m || status=$?
if [[ $status -ne 0 ]]; then
  kubectl -n "$NAMESPACE" get all,inferenceservice 2>/dev/null || true
  kubectl -n "$NAMESPACE" describe pods || true
fi

if [[ "${KEEP:-1}" == "0" ]]; then
  kind delete cluster --name "$KIND_CLUSTER"
fi
exit $status
