#!/usr/bin/env bash
# End-to-end test on kind, one chart mode per run: create the cluster, install that mode's
# prerequisites (manifests/install-prereqs.sh), build and load the image, `helm install` the chart with
# the mode's ci values, check what the controllers made of it, and run `helm test` (one real v2
# inference request). .github/workflows/e2e-kind.yml runs every mode as a matrix.
#
# NOT run in this project's own CI (no Docker, kind or cluster there), and not run while it was
# written: it has been checked with `bash -n` and shellcheck only. Run it locally with `make e2e-kind`,
# or in the workflow on a runner that has Docker and kind.
#
# Env: MODE  standard-hpa (default)   InferenceService, Standard mode, KServe HPA on cpu; then
#                                     autoscaling off with replicaCount=2 (autoscalerClass none)
#            standard-keda            Standard mode, KEDA on the Prometheus query, PodMonitor
#            knative                  Knative mode (Knative Serving + Kourier), NetworkPolicy
#            deployment               plain Deployment + Service + HPA, no KServe
#            storage-uri-restricted   model fetched by KServe's storage initializer, in a namespace
#                                     enforcing the restricted Pod Security Standard
#      KSERVE_VERSION  v0.16.0 (default) or v0.15.2; sets the chart's kserveVersion to match
#      IMAGE           image reference to build and load (default perf-predictor:e2e)
#      SKIP_BUILD=1    reuse an image already present in the local Docker daemon
#      KEEP=1          keep the cluster afterwards (default: keep; set KEEP=0 to delete)
#      KIND_CLUSTER, KIND_NODE_IMAGE  see kind-up.sh (use one cluster per MODE: the modes install
#                      different, conflicting prerequisites)
set -euo pipefail
cd "$(dirname "$0")/.."

MODE="${MODE:-standard-hpa}"
KSERVE_VERSION="${KSERVE_VERSION:-v0.16.0}"
IMAGE="${IMAGE:-perf-predictor:e2e}"
KIND_CLUSTER="${KIND_CLUSTER:-perf-predictor}"
NAMESPACE="${NAMESPACE:-perf-predictor}"
HELM="${HELM:-helm}"
CI=charts/perf-predictor/ci
export KIND_CLUSTER HELM KSERVE_VERSION

kserve_minor="${KSERVE_VERSION#v}"; kserve_minor="${kserve_minor%.*}"   # v0.16.0 -> 0.16
values=(--set "kserveVersion=${kserve_minor}")
case "$MODE" in
  standard-hpa)
    prereqs=(env KSERVE_MODE=Standard) ;;
  standard-keda)
    prereqs=(env KSERVE_MODE=Standard WITH_KEDA=1 WITH_PROMETHEUS=1)
    values+=(-f "$CI/keda-values.yaml") ;;
  knative)
    prereqs=(env KSERVE_MODE=Knative)
    # the PodMonitor of that file needs prometheus-operator, which this mode does not install
    values+=(-f "$CI/knative-network-policy-values.yaml" --set monitoring.podMonitor.enabled=false) ;;
  deployment)
    prereqs=(env SKIP_KSERVE=1)
    values+=(-f "$CI/deployment-values.yaml") ;;
  storage-uri-restricted)
    prereqs=(env KSERVE_MODE=Standard) ;;
  *)
    echo "e2e-kind.sh: unknown MODE=$MODE" >&2; exit 2 ;;
esac

bash manifests/kind-up.sh
"${prereqs[@]}" bash manifests/install-prereqs.sh

if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
  if [[ -f scripts/build-image.sh ]]; then
    IMAGE="$IMAGE" TARGET=runtime bash scripts/build-image.sh   # the project's `make image`
  else
    docker build --target runtime -t "$IMAGE" .
  fi
fi
kind load docker-image "$IMAGE" --name "$KIND_CLUSTER"
repo="${IMAGE%:*}"; tag="${IMAGE##*:}"
values+=(--set image.repository="$repo" --set image.tag="$tag" --set image.pullPolicy=Never)

kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -

if [[ "$MODE" == "storage-uri-restricted" ]]; then
  # the namespace refuses any pod that breaks the restricted standard, the injected init container included
  kubectl label --overwrite namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted
  kubectl patch clusterstoragecontainer default --type merge \
    --patch-file charts/perf-predictor/files/storage-initializer-restricted-patch.yaml
  # a model source inside the cluster: the image's baked-in model as a tar.gz over HTTP
  kubectl create namespace model-src --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n model-src apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: model-src
  labels: {app: model-src}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 10001, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: http
      image: ${IMAGE}
      imagePullPolicy: Never
      command: ["python3", "-c"]
      args:
        - |
          import http.server, os, tarfile
          os.makedirs("/tmp/www", exist_ok=True)
          with tarfile.open("/tmp/www/model.tar.gz", "w:gz") as t:
              for name in os.listdir("/mnt/models"):
                  t.add(os.path.join("/mnt/models", name), arcname=name)
          os.chdir("/tmp/www")
          http.server.ThreadingHTTPServer(("", 8000), http.server.SimpleHTTPRequestHandler).serve_forever()
      ports: [{containerPort: 8000}]
      securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
      volumeMounts: [{name: tmp, mountPath: /tmp}]
  volumes: [{name: tmp, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata:
  name: model-src
spec:
  selector: {app: model-src}
  ports: [{port: 8000, targetPort: 8000}]
EOF
  kubectl -n model-src wait --for=condition=Ready pod/model-src --timeout=5m
  values+=(-f "$CI/storage-uri-values.yaml"
           --set model.storageUri="http://model-src.model-src.svc.cluster.local:8000/model.tar.gz")
fi

"$HELM" upgrade --install perf-predictor charts/perf-predictor --namespace "$NAMESPACE" \
  "${values[@]}" --wait --timeout 10m

status=0
check() {   # check <description> <command...>: run a check, remember a failure, keep going
  local what="$1"; shift
  if "$@"; then echo "ok: $what"; else echo "FAILED: $what" >&2; status=1; fi
}

if [[ "$MODE" != "deployment" ]]; then
  check "InferenceService Ready" \
    kubectl -n "$NAMESPACE" wait --for=condition=Ready inferenceservice/perf-predictor --timeout=10m
fi
case "$MODE" in
  standard-hpa)
    check "KServe made the HPA" kubectl -n "$NAMESPACE" get hpa perf-predictor-predictor ;;
  standard-keda)
    check "KServe made the ScaledObject, KEDA has it Ready" \
      kubectl -n "$NAMESPACE" wait --for=condition=Ready scaledobject/perf-predictor-predictor --timeout=5m ;;
  knative)
    check "Knative Service Ready" \
      kubectl -n "$NAMESPACE" wait --for=condition=Ready ksvc/perf-predictor-predictor --timeout=5m ;;
  storage-uri-restricted)
    check "the storage initializer ran in the restricted namespace" bash -c \
      "kubectl -n '$NAMESPACE' get pods -l app.kubernetes.io/instance=perf-predictor -o jsonpath='{.items[*].spec.initContainers[*].name}' | grep -q storage-initializer" ;;
esac

check "helm test" "$HELM" test perf-predictor --namespace "$NAMESPACE" --logs --timeout 5m

if [[ "$MODE" == "standard-hpa" ]]; then
  # autoscaling off: autoscalerClass none, and KServe must run replicaCount pods (not one)
  "$HELM" upgrade perf-predictor charts/perf-predictor --namespace "$NAMESPACE" --reuse-values \
    --set autoscaling.enabled=false --set replicaCount=2 --wait --timeout 10m
  check "two fixed replicas" bash -c \
    "for _ in \$(seq 60); do [[ \$(kubectl -n '$NAMESPACE' get deployment perf-predictor-predictor -o jsonpath='{.status.readyReplicas}') == 2 ]] && exit 0; sleep 5; done; exit 1"
fi

if [[ $status -ne 0 ]]; then
  kubectl -n "$NAMESPACE" get all,inferenceservice,hpa 2>/dev/null || true
  kubectl -n "$NAMESPACE" describe pods || true
  kubectl get events -n "$NAMESPACE" --sort-by=.lastTimestamp | tail -40 || true
fi

if [[ "${KEEP:-1}" == "0" ]]; then
  kind delete cluster --name "$KIND_CLUSTER"
fi
exit $status
