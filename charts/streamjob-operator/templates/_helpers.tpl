{{/* Chart name, overridable. */}}
{{- define "streamjob-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: <release>-<chart>, or the release name when it already
contains the chart name. Kubernetes names are capped at 63 characters.
*/}}
{{- define "streamjob-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "streamjob-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release, but the component. */}}
{{- define "streamjob-operator.baseLabels" -}}
helm.sh/chart: {{ include "streamjob-operator.chart" . }}
app.kubernetes.io/name: {{ include "streamjob-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streamjob
{{- end }}

{{/* Labels of the operator's own objects. */}}
{{- define "streamjob-operator.labels" -}}
{{ include "streamjob-operator.baseLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels that select the operator pods (immutable once installed). */}}
{{- define "streamjob-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamjob-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "streamjob-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streamjob-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is set. */}}
{{- define "streamjob-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
<fullname>-<suffix>, with the full name shortened so the result stays a 63-character name:
include "streamjob-operator.suffixedName" (list . "metrics")
*/}}
{{- define "streamjob-operator.suffixedName" -}}
{{- $ctx := index . 0 }}
{{- $suffix := index . 1 }}
{{- $base := include "streamjob-operator.fullname" $ctx | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{/* Name of the metrics Service (also used by the helm test and the ServiceMonitor). */}}
{{- define "streamjob-operator.metricsServiceName" -}}
{{- include "streamjob-operator.suffixedName" (list . "metrics") }}
{{- end }}

{{/* Checks of value combinations that the schema cannot express. */}}
{{- define "streamjob-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: two operators without a leader would fight over the same StreamJobs" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled=true" }}
{{- end }}
{{- if ne (len .Values.watchNamespaces) (len (uniq .Values.watchNamespaces)) }}
{{- fail "watchNamespaces lists a namespace twice" }}
{{- end }}
{{- end }}
