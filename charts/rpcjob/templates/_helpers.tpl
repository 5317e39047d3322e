{{/* Chart name. */}}
{{- define "rpcjob.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource-name prefix: <release>-<chart>, or the release name when it contains the chart name. */}}
{{- define "rpcjob.fullname" -}}
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

{{/* Labels on every resource. */}}
{{- define "rpcjob.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "rpcjob.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component (operator, etcd). */}}
{{- define "rpcjob.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rpcjob.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "rpcjob.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "rpcjob.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Namespaces watched in namespace scope, as a JSON list (default: the release namespace). */}}
{{- define "rpcjob.watchNamespaces" -}}
{{- if .Values.rbac.namespaces }}
{{- .Values.rbac.namespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/* Namespaces that get the job ServiceAccount, as a JSON list. */}}
{{- define "rpcjob.jobNamespaces" -}}
{{- $base := list .Release.Namespace }}
{{- if eq .Values.rbac.scope "namespace" }}
{{- $base = include "rpcjob.watchNamespaces" . | fromJsonArray }}
{{- end }}
{{- concat $base .Values.jobs.serviceAccount.namespaces | uniq | toJson }}
{{- end }}

{{- define "rpcjob.etcd.bundled" -}}
{{- if and .Values.etcd.bundled.enabled (empty .Values.etcd.endpoints) }}true{{ end }}
{{- end }}

{{- define "rpcjob.etcd.fullname" -}}
{{- printf "%s-etcd" (include "rpcjob.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rpcjob.etcd.scheme" -}}
{{- if .Values.etcd.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* The jobs' default etcd endpoints, comma-separated (empty: jobs must set spec.etcd). */}}
{{- define "rpcjob.etcd.endpoints" -}}
{{- if .Values.etcd.endpoints }}
{{- join "," .Values.etcd.endpoints }}
{{- else if include "rpcjob.etcd.bundled" . }}
{{- printf "%s://%s.%s.svc:2379" (include "rpcjob.etcd.scheme" .) (include "rpcjob.etcd.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "rpcjob.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Restricted pod security (Pod Security Standards "restricted"), pod level. */}}
{{- define "rpcjob.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Restricted pod security, container level. */}}
{{- define "rpcjob.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Fail early on value combinations the schema cannot express. */}}
{{- define "rpcjob.validate" -}}
{{- if and .Values.etcd.tls.enabled (not .Values.etcd.tls.secretName) }}
{{- fail "etcd.tls.secretName is required when etcd.tls.enabled is true: name a Secret with ca.crt, tls.crt and tls.key" }}
{{- end }}
{{- if and .Values.etcd.auth.enabled (not .Values.etcd.auth.secretName) }}
{{- fail "etcd.auth.secretName is required when etcd.auth.enabled is true: name a Secret with username and password" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled: the ServiceMonitor scrapes the metrics Service" }}
{{- end }}
{{- end }}
