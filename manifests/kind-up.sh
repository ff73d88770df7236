#!/usr/bin/env bash
# Create (or reuse) the local kind cluster from manifests/kind-config.yaml.
# NOT run in this project's CI (no Docker there). Needs: docker, kind, kubectl.
#
# Env: KIND_CLUSTER     cluster name            (default perf-predictor)
#      KIND_NODE_IMAGE  pinned kindest/node tag (default kindest/node:v1.32.2, kind v0.27.0)
set -euo pipefail
cd "$(dirname "$0")/.."

KIND_CLUSTER="${KIND_CLUSTER:-perf-predictor}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.32.2}"

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "kind-up.sh: $tool is required" >&2; exit 1; }
done

if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  echo "kind cluster $KIND_CLUSTER already exists"
else
  kind create cluster --name "$KIND_CLUSTER" --image "$KIND_NODE_IMAGE" \
    --config manifests/kind-config.yaml --wait 120s
fi
kubectl config use-context "kind-$KIND_CLUSTER" >/dev/null
kubectl get nodes -o wide
