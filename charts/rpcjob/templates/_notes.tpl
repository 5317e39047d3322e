{{/* The install notes (NOTES.txt prints them; a test renders them through this define). */}}
{{- define "rpcjob.notes" -}}
rpcjob {{ .Chart.AppVersion }} is installed as release {{ .Release.Name }} in namespace {{ .Release.Namespace }}.

{{- if eq .Values.rbac.scope "cluster" }}
The operator watches RpcJobs in every namespace.
{{- else }}
The operator watches RpcJobs in: {{ include "rpcjob.watchNamespaces" . | fromJsonArray | join ", " }}.
{{- end }}
Job pods without a serviceAccountName run as "{{ .Values.jobs.serviceAccount.name }}", which exists in:
  {{ include "rpcjob.jobNamespaces" . | fromJsonArray | join ", " }}
{{- if eq .Values.rbac.scope "cluster" }}
  (add every namespace that runs jobs to jobs.serviceAccount.namespaces)
{{- end }}

Default etcd for jobs without spec.etcd:
{{- $endpoints := include "rpcjob.etcd.endpoints" . }}
{{- if $endpoints }}
  {{ $endpoints }}{{ if include "rpcjob.etcd.bundled" . }} (bundled StatefulSet {{ include "rpcjob.etcd.fullname" . }}){{ end }}
{{- else }}
  none: every RpcJob must set spec.etcd.endpoints (etcd.bundled.enabled is false and etcd.endpoints is empty).
{{- end }}
{{- if .Values.etcd.tls.enabled }}
  TLS: job namespaces need a Secret "{{ .Values.etcd.tls.secretName }}" (ca.crt, tls.crt, tls.key).
{{- end }}
{{- if .Values.etcd.auth.enabled }}
  Auth: job namespaces need a Secret "{{ .Values.etcd.auth.secretName }}" (username, password).
{{- end }}

Check the operator:
  kubectl -n {{ .Release.Namespace }} rollout status deployment/{{ include "rpcjob.fullname" . }}-operator

Run an example and watch it:
  kubectl apply -f examples/parameter_server/rpcjob.yaml
  kubectl get rpj -w

{{- if not .Values.crds.install }}

crds.install is false: apply the CRD yourself before every upgrade:
  kubectl apply --server-side -f crds/
{{- end }}
{{- end }}
