{{/*
  RBAC rules shared by the ClusterRole (cluster-wide) and the per-namespace Roles. Each rule is a call
  the operator makes; tests/integration/charts/test_install.py runs the operator as this chart's
  ServiceAccount against an audited API server and fails on a forbidden call or an unused rule that
  is not listed there (with its reason) as deliberately extra.
*/}}
{{- define "chronoshard.namespacedRules" }}
# Our custom resources: Kopf lists and watches them and patches metadata (finalizer, bookkeeping
# annotations) and status. The operator never updates or deletes a user's objects (it creates Reversions below).
- apiGroups: [chronoshard.io]
  resources: [shardsets, keyrotations, prefetchpolicies, shadowpolicies, mirrorsets, weaveplans, reversions, reshards]
  verbs: [list, watch, patch]
- apiGroups: [chronoshard.io]
  resources: [shardsets/status, keyrotations/status, prefetchpolicies/status, shadowpolicies/status, mirrorsets/status, weaveplans/status, reversions/status, reshards/status]
  verbs: [patch]
# A ShadowPolicy proposes a Reversion for a severe anomaly incident (docs/reversion.md): the one object of a
# user's kind the operator creates; it never updates or deletes one.
- apiGroups: [chronoshard.io]
  resources: [reversions]
  verbs: [create]
# A ShardSet with spec.partitioning.rebalance creates the Reshard <shardset>-rebalance-<epoch> on a scale
# (docs/resharding.md), and reads it to know whether it completed; it never updates or deletes one.
- apiGroups: [chronoshard.io]
  resources: [reshards]
  verbs: [create, get]
# A KeyRotation reads the ShardSet it rotates.
- apiGroups: [chronoshard.io]
  resources: [shardsets]
  verbs: [get]
# The keyring and KEK Secrets are created once (their key bytes are generated, never applied from a
# template); the keyring is patched when a KeyRotation adds or retires a key version. A ShardSet's
# kekSecretRef Secret is only read.
- apiGroups: [""]
  resources: [secrets]
  verbs: [create, get, list, watch, patch]
# The other children of a ShardSet, written with server-side apply (an apply that creates the
# object is authorized as create too) and watched so a change by someone else is repaired.
# Removal is left to the garbage collector (owner references), so there is no delete, but for the
# <shardset>-replication ConfigMap of a ShardSet that left its MirrorSet.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, get, list, watch, patch, delete]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [create, get, list, watch, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [create, list, watch, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [create, list, watch, patch]
# The shard pods' ServiceAccount (its token asks TokenReview/SubjectAccessReview) and the NetworkPolicy
# that says who may reach the pods: applied and watched like the other children.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [create, list, watch, patch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create, list, watch, patch]
# A MirrorSet member's pods hold their primary Leases (docs/mirroring.md): the operator applies and watches a
# Role <shardset>-lease and its RoleBinding to the pods' ServiceAccount (deleted when the ShardSet leaves its
# MirrorSet). RBAC lets it grant only what it holds itself, so it holds the Role's lease verbs too.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create, list, watch, patch, delete]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update, patch]
# A ShardSet with spec.tls.issuerRef gets a cert-manager Certificate for its pods (server-side apply);
# the operator then only reads the Secret cert-manager fills.
- apiGroups: [cert-manager.io]
  resources: [certificates]
  verbs: [create, patch]
# Shard pods are only listed: a key rotation asks each pod's node which key versions it loaded.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Events are the user interface of every step (kubectl describe); Kopf creates them, never patches.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
{{- define "chronoshard.clusterRules" }}
# Kopf scans CRDs to resolve the resources it serves and notices when they come and go.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
# A ShardSet naming a StorageClass is checked against the cluster's StorageClasses (clear condition
# instead of pods stuck Pending).
- apiGroups: [storage.k8s.io]
  resources: [storageclasses]
  verbs: [get]
# Each ShardSet's pods are bound to system:auth-delegator (TokenReview, SubjectAccessReview) by a
# ClusterRoleBinding chronoshard:shard:NAMESPACE:NAME: applied, deleted with the ShardSet, and listed at start
# to sweep bindings whose ShardSet is gone. Binding a role needs `bind` on it (the operator does not hold
# its permissions itself), granted for that one ClusterRole only.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterrolebindings]
  verbs: [create, list, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterroles]
  resourceNames: [system:auth-delegator]
  verbs: [bind]
{{- end }}
