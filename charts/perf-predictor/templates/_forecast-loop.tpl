{{/* vim: set filetype=mustache: */}}
{{/*
Names, labels and the config file of the optional forecast loop (`forecastLoop.enabled`):
`python -m forecast_loop` in the predictor's image, reading Prometheus and calling this release's model.
*/}}

{{- define "perf-predictor.forecastLoop.fullname" -}}
{{- printf "%s-forecast-loop" (include "perf-predictor.fullname" .) }}
{{- end }}

{{- define "perf-predictor.forecastLoop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "perf-predictor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: forecast-loop
{{- end }}

{{- define "perf-predictor.forecastLoop.labels" -}}
{{ include "perf-predictor.labels" . }}
app.kubernetes.io/component: forecast-loop
{{- end }}

{{/* The model's v2 base URL: forecastLoop.model.url, else this release's predictor Service. */}}
{{- define "perf-predictor.forecastLoop.modelURL" -}}
{{- default (include "perf-predictor.testURL" .) .Values.forecastLoop.model.url }}
{{- end }}

{{/* Labels of the predictor pods, for the loop's NetworkPolicy egress (KServe labels its pods with the
InferenceService's name: pkg/constants/constants.go InferenceServicePodLabelKey). */}}
{{- define "perf-predictor.forecastLoop.predictorPodLabels" -}}
{{- if include "perf-predictor.isKServe" . }}
serving.kserve.io/inferenceservice: {{ include "perf-predictor.fullname" . }}
{{- else }}
{{- include "perf-predictor.selectorLabels" . }}
{{- end }}
{{- end }}

{{/* The loop's config file (docs/forecast-loop.md), from values. */}}
{{- define "perf-predictor.forecastLoop.config" -}}
{{- $f := .Values.forecastLoop }}
{{- $prometheus := dict "url" $f.prometheus.url "timeout" $f.prometheus.timeout }}
{{- with $f.prometheus.bearerTokenFile }}{{ $_ := set $prometheus "bearer_token_file" . }}{{ end }}
{{- with $f.prometheus.caFile }}{{ $_ := set $prometheus "ca_file" . }}{{ end }}
{{- $model := dict "url" (include "perf-predictor.forecastLoop.modelURL" .) "name" .Values.model.name "timeout" $f.model.timeout "max_batch_series" $f.model.maxBatchSeries }}
{{- with $f.model.step }}{{ $_ := set $model "step" . }}{{ end }}
{{- if .Values.auth.enabled }}{{ $_ := set $model "bearer_token_file" (include "perf-predictor.authTokenFile" .) }}{{ end }}
{{- $config := dict "prometheus" $prometheus "model" $model "interval" $f.interval "horizons" $f.horizons "listen" "0.0.0.0:9400" "accuracy" (dict "window" $f.accuracyWindow) "targets" $f.targets }}
{{- if $f.scaler.enabled }}{{ $_ := set $config "scaler" (dict "listen" (printf "0.0.0.0:%d" (int $f.scaler.port))) }}{{ end }}
{{- toYaml $config }}
{{- end }}

{{/* The loop's Service address as KEDA's operator dials it (host:port, no scheme). */}}
{{- define "perf-predictor.forecastLoop.scalerAddress" -}}
{{- printf "%s.%s.svc.cluster.local:%d" (include "perf-predictor.forecastLoop.fullname" .) (include "perf-predictor.namespace" .) (int .Values.forecastLoop.scaler.port) }}
{{- end }}
