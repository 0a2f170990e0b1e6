{{/*
The operator's permissions: exactly what operator/src/rbac.rs lists (`streamjob-operator rbac`
prints it). tests/python/test_chart.py fails when the two differ in either direction, so a new
API call in the operator cannot ship without its grant, and no grant outlives its use.
*/}}

{{/*
Rules the operator needs wherever it manages StreamJobs: cluster-wide (ClusterRole) or in each
watched namespace (Role).
*/}}
{{- define "streamjob-operator.rules.streamjobs" -}}
- apiGroups: ["streaming.austin.dev"]
  resources: ["streamjobs"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["streaming.austin.dev"]
  resources: ["streamjobs/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["streaming.austin.dev"]
  resources: ["streamjobs/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["configmaps", "services", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Leader election: the Lease `streamjob-operator`, in the operator's own namespace only. */}}
{{- define "streamjob-operator.rules.leaderElection" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update", "patch"]
{{- end }}
