{{/*
The operator's rules on RpcJobs and the objects it creates for them: exactly the verbs it uses
(tests/test_chart_rbac.py forbids wildcards; the e2e RBAC scenario compares these rules with the
API calls the operator really makes).
*/}}
{{- define "rpcjob.operator.jobRules" -}}
# kopf (operator): watch jobs; patch finalizers, annotations (handler progress) and spec defaults;
# delete a finished job once runPolicy.ttlSecondsAfterFinished has passed.
- apiGroups: ["rpcjob.dev"]
  resources: ["rpcjobs"]
  verbs: ["get", "list", "watch", "patch", "update", "delete"]
# operator: one status write per reconcile cycle (status subresource).
- apiGroups: ["rpcjob.dev"]
  resources: ["rpcjobs/status"]
  verbs: ["get", "patch", "update"]
# operator: the job's pods (create per slot, delete scale-down victims, patch labels/annotations).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
# operator: the job's headless Service (publishNotReadyAddresses).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# operator: the job's NetworkPolicy (RPC ports only from the job's own pods).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# kopf and the operator: an event for every decision (core/v1 and events.k8s.io/v1 clients).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
