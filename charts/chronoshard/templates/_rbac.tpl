{{/* RBAC rules shared by the ClusterRole (cluster-wide) and the per-namespace Roles. */}}
{{- define "chronoshard.namespacedRules" }}
# Our custom resources: Kopf watches them, patches metadata (finalizer, bookkeeping annotations)
# and the status subresource. The operator never creates, updates or deletes a user's objects.
- apiGroups: [chronoshard.io]
  resources: [shardsets, keyrotations, prefetchpolicies, shadowpolicies, mirrorsets, weaveplans]
  verbs: [get, list, watch, patch]
- apiGroups: [chronoshard.io]
  resources: [shardsets/status, keyrotations/status, prefetchpolicies/status, shadowpolicies/status, mirrorsets/status, weaveplans/status]
  verbs: [get, patch]
# The children of a ShardSet, written with server-side apply (patch) and removed on scale-down.
- apiGroups: [""]
  resources: [secrets, configmaps, services]
  verbs: [create, get, list, watch, patch, delete]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [create, get, list, watch, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [create, get, list, watch, patch, delete]
# Shard pods are only read (readiness, addresses for the nodes' key reports).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Events are the user interface of every step (kubectl describe).
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}
{{- define "chronoshard.clusterRules" }}
# Kopf scans CRDs to resolve the resources it serves and notices when they come and go.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end }}
