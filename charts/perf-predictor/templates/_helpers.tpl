{{/* vim: set filetype=mustache: */}}
{{/*
Names and labels are defined here once; every template uses these helpers.
*/}}

{{- define "perf-predictor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name. Truncated to 45 characters because KServe derives
`<name>-predictor-...` object and host names from it (DNS labels are 63 max).
*/}}
{{- define "perf-predictor.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "perf-predictor.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "perf-predictor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable, used by Services, monitors, PDB and NetworkPolicy. */}}
{{- define "perf-predictor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "perf-predictor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: predictor
{{- end }}

{{- define "perf-predictor.labels" -}}
helm.sh/chart: {{ include "perf-predictor.chart" . }}
app.kubernetes.io/name: {{ include "perf-predictor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: perf-predictor
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the predictor workload and its pods. */}}
{{- define "perf-predictor.workloadLabels" -}}
{{ include "perf-predictor.labels" . }}
app.kubernetes.io/component: predictor
{{- end }}

{{- define "perf-predictor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "perf-predictor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "perf-predictor.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "perf-predictor.isKServe" -}}
{{- if eq .Values.workload "inferenceService" }}true{{- end }}
{{- end }}

{{- define "perf-predictor.isKnative" -}}
{{- if and (eq .Values.workload "inferenceService") (eq .Values.deploymentMode "Knative") }}true{{- end }}
{{- end }}

{{/*
The deployment-mode name the cluster's KServe understands. KServe 0.15 knows only RawDeployment and
Serverless (pkg/constants/constants.go, v0.15.2) and falls back to its default mode for any other name;
0.16 added Standard and Knative, and its webhook validates HPA/KEDA settings only under the literal
name Standard (pkg/apis/serving/v1beta1/inference_service_validation.go, v0.16.0).
*/}}
{{- define "perf-predictor.kserveDeploymentMode" -}}
{{- if semverCompare "<0.16.0-0" .Values.kserveVersion }}
{{- ternary "Serverless" "RawDeployment" (eq .Values.deploymentMode "Knative") }}
{{- else }}
{{- .Values.deploymentMode }}
{{- end }}
{{- end }}

{{/*
"true" unless the pod spec goes to Knative and the Knative feature flag named by the second list
element is off: KServe passes the predictor pod spec to the Knative Service unchanged, and Knative's
webhook refuses every pod field whose flag is disabled (knative/serving pkg/apis/serving/fieldmask.go).
Called as: include "perf-predictor.knativeAllows" (list . "kubernetes.podspec-securitycontext")
*/}}
{{- define "perf-predictor.knativeAllows" -}}
{{- $root := index . 0 }}
{{- if or (not (include "perf-predictor.isKnative" $root)) (has (index . 1) $root.Values.knative.enabledFeatures) }}true{{- end }}
{{- end }}

{{/*
Container securityContext. When Knative refuses the pod-level one (flag
kubernetes.podspec-securitycontext off), the user, group, non-root and seccomp settings of
podSecurityContext move onto the container, whose securityContext Knative accepts.
*/}}
{{- define "perf-predictor.containerSecurityContext" -}}
{{- $sc := deepCopy (default dict .Values.securityContext) }}
{{- if not (include "perf-predictor.knativeAllows" (list . "kubernetes.podspec-securitycontext")) }}
{{- $sc = merge $sc (pick (default dict .Values.podSecurityContext) "runAsUser" "runAsGroup" "runAsNonRoot" "seccompProfile") }}
{{- end }}
{{- with $sc }}{{ toYaml . }}{{ end }}
{{- end }}

{{/* Largest number of replicas the workload may run (decides the PodDisruptionBudget). */}}
{{- define "perf-predictor.maxReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.maxReplicas }}{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{/* Readiness path of the model. */}}
{{- define "perf-predictor.readyPath" -}}
{{- printf "/v2/models/%s/ready" .Values.model.name }}
{{- end }}

{{/* Authentication (auth.enabled): the Secret of tokens, mounted read-only where the server, and the
forecast loop, read it; Kubernetes updates the file in place when the Secret changes (no subPath). */}}
{{- define "perf-predictor.authSecretName" -}}
{{- default (printf "%s-auth" (include "perf-predictor.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "perf-predictor.authTokenFile" -}}
/var/run/secrets/perf-predictor/tokens
{{- end }}

{{- define "perf-predictor.authVolume" -}}
- name: auth-tokens
  secret:
    secretName: {{ include "perf-predictor.authSecretName" . }}
    items:
      - key: {{ .Values.auth.secretKey }}
        path: tokens
    {{- /* group-readable (0440) where the pod's fsGroup owns the files, else world-readable (0444): the
    container's only user is the server */}}
    defaultMode: {{ if and (default dict .Values.podSecurityContext).fsGroup (include "perf-predictor.knativeAllows" (list . "kubernetes.podspec-securitycontext")) }}288{{ else }}292{{ end }}
{{- end }}

{{- define "perf-predictor.authVolumeMount" -}}
- name: auth-tokens
  mountPath: /var/run/secrets/perf-predictor
  readOnly: true
{{- end }}

{{/* Base URL the helm test pod talks to. */}}
{{- define "perf-predictor.testURL" -}}
{{- $ns := include "perf-predictor.namespace" . }}
{{- if include "perf-predictor.isKServe" . }}
{{- printf "http://%s-predictor.%s.svc.cluster.local" (include "perf-predictor.fullname" .) $ns }}
{{- else }}
{{- printf "http://%s.%s.svc.cluster.local:%v" (include "perf-predictor.fullname" .) $ns .Values.service.httpPort }}
{{- end }}
{{- end }}

{{/*
Value checks the JSON schema cannot express; the schema rejects the common
mistakes first (see values.schema.json).
*/}}
{{- define "perf-predictor.validate" -}}
{{- $a := .Values.autoscaling }}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%v) must not exceed autoscaling.maxReplicas (%v)" $a.minReplicas $a.maxReplicas) }}
{{- end }}
{{- $m := .Values.monitoring }}
{{- if and $m.serviceMonitor.enabled $m.podMonitor.enabled }}
{{- fail "monitoring.serviceMonitor.enabled and monitoring.podMonitor.enabled are both true: pick one, or Prometheus scrapes every pod twice" }}
{{- end }}
{{- if and $m.serviceMonitor.enabled (include "perf-predictor.isKnative" .) }}
{{- fail "monitoring.serviceMonitor is not supported with deploymentMode=Knative (Knative's Services front the queue-proxy): use monitoring.podMonitor" }}
{{- end }}
{{- if and .Values.server.repositoryApi (not .Values.auth.enabled) }}
{{- fail "server.repositoryApi lets any caller unload the model: it needs auth.enabled" }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) (not .Values.auth.tokens) }}
{{- fail "auth.enabled needs the tokens: auth.existingSecret (a Secret you manage; safer) or auth.tokens" }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.openMetrics) (or $m.serviceMonitor.enabled $m.podMonitor.enabled) }}
{{- fail "auth.openMetrics=false: the ServiceMonitor/PodMonitor scrape carries no token; leave metrics open or scrape with your own monitor" }}
{{- end }}
{{- if and .Values.model.storageUri (eq .Values.workload "deployment") }}
{{- fail "model.storageUri needs KServe's storage initializer: use workload=inferenceService, or mount the model with extraVolumes/extraVolumeMounts at /mnt/models" }}
{{- end }}
{{- if include "perf-predictor.isKnative" . }}
{{- /* pod fields Knative's webhook refuses unless their flag is on (knative/serving pkg/apis/serving/fieldmask.go PodSpecMask, pkg/apis/config/features.go) */}}
{{- $flags := dict "nodeSelector" "kubernetes.podspec-nodeselector" "tolerations" "kubernetes.podspec-tolerations" "affinity" "kubernetes.podspec-affinity" "topologySpreadConstraints" "kubernetes.podspec-topologyspreadconstraints" "priorityClassName" "kubernetes.podspec-priorityclassname" }}
{{- range $field, $flag := $flags }}
{{- if and (get $.Values $field) (not (include "perf-predictor.knativeAllows" (list $ $flag))) }}
{{- fail (printf "%s is set but deploymentMode=Knative: Knative's webhook refuses it unless its feature flag %s is enabled in config-features; enable the flag and add it to knative.enabledFeatures, or unset %s" $field $flag $field) }}
{{- end }}
{{- end }}
{{- range .Values.extraVolumes }}
{{- if not (or .emptyDir .secret .configMap .projected (and .persistentVolumeClaim (has "kubernetes.podspec-persistent-volume-claim" $.Values.knative.enabledFeatures))) }}
{{- fail (printf "extraVolumes[%s]: Knative accepts only emptyDir, secret, configMap and projected volumes (persistentVolumeClaim with the flag kubernetes.podspec-persistent-volume-claim in knative.enabledFeatures)" .name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------------
Shared pod and container partials, used by the InferenceService predictor
and by the plain Deployment so both run the same container.
--------------------------------------------------------------------- */}}

{{/* The predictor container (name kserve-container, KServe's convention). */}}
{{- define "perf-predictor.container" -}}
- name: kserve-container
  image: {{ include "perf-predictor.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - --model_name={{ .Values.model.name }}
    - --model_dir=/mnt/models
    - --http_port=8080
    - --grpc_port=8081
    - --workers={{ .Values.server.workers }}
    {{- if .Values.auth.enabled }}
    - --auth_token_file={{ include "perf-predictor.authTokenFile" . }}
    - --auth_open={{ if .Values.auth.openMetrics }}health,metrics{{ else }}health{{ end }}
    {{- end }}
    {{- if .Values.server.repositoryApi }}
    - --enable_repository_api
    {{- end }}
    {{- with .Values.model.digest }}
    - --model_digest={{ . }}
    {{- end }}
    {{- range .Values.server.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  ports:
    - name: http1
      containerPort: 8080
      protocol: TCP
    {{- if not (include "perf-predictor.isKnative" .) }}
    - name: h2c
      containerPort: 8081
      protocol: TCP
    {{- end }}
  env:
    - name: HOME
      value: /tmp
    - name: TMPDIR
      value: /tmp
    - name: PYTHONDONTWRITEBYTECODE
      value: "1"
    {{- if and (include "perf-predictor.isKServe" .) .Values.model.storageUri }}
    - name: STORAGE_URI
      value: {{ .Values.model.storageUri | quote }}
    {{- end }}
    {{- with .Values.server.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  readinessProbe:
    httpGet:
      path: {{ include "perf-predictor.readyPath" . }}
      port: 8080
    {{- toYaml .Values.probes.readiness | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /v2/health/live
      port: 8080
    {{- toYaml .Values.probes.liveness | nindent 4 }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with include "perf-predictor.containerSecurityContext" . }}
  securityContext:
    {{- . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- if .Values.auth.enabled }}
    {{- include "perf-predictor.authVolumeMount" . | nindent 4 }}
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* Pod-level fields (without containers), shared by both workloads. */}}
{{- define "perf-predictor.podSpecFields" -}}
serviceAccountName: {{ include "perf-predictor.serviceAccountName" . }}
automountServiceAccountToken: false
{{- if include "perf-predictor.knativeAllows" (list . "kubernetes.podspec-securitycontext") }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- if not (include "perf-predictor.isKnative" .) }}
{{- /* Knative never accepts it (fieldmask.go) and sets the revision's timeout in its place */}}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: {{ .Values.tmpSizeLimit }}
  {{- if .Values.auth.enabled }}
  {{- include "perf-predictor.authVolume" . | nindent 2 }}
  {{- end }}
  {{- with .Values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Pod labels (selector labels + user pod labels). */}}
{{- define "perf-predictor.podLabels" -}}
{{ include "perf-predictor.workloadLabels" . }}
{{- with .Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}
