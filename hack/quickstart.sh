#!/usr/bin/env bash
# The README's first command: a running chronoshard on this machine, no container runtime needed.
#   1. .venv with chronoshard installed (editable, locked) 3. chronoshard-dev up (control plane, operator, node agent)
#   2. the pinned control plane binaries (hack/envtest.sh, built once, then cached)
#   4. the sample ShardSet applied and waited for; then `kubectl get chronoshard` and `kubectl get pods`
#   5. ServiceAccount demo allowed on table orders; a put and a get with `chronoshard --service-account demo`
# Stop everything with `.venv/bin/chronoshard-dev down`. State: $CHRONOSHARD_DEV_STATE (default ~/.cache/chronoshard/dev).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '[quickstart] %s\n' "$*" >&2; }

python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv with $($python --version)"
  "$python" -P -m venv .venv
fi
say "installing chronoshard into .venv"
.venv/bin/python -P -m pip install -q --upgrade pip
# The versions the image ships (requirements.lock) and the devcluster's (requirements-dev.lock), see hack/lock.sh.
.venv/bin/python -P -m pip install -q --constraint requirements.lock --constraint requirements-dev.lock \
  -e '.[ml]' -e ./devcluster

say "control plane binaries (the first build takes ~15 min on 2 cores; progress below)"
CHRONOSHARD_ENVTEST_BIN="$(bash hack/envtest.sh)"
export CHRONOSHARD_ENVTEST_BIN
kubectl="$CHRONOSHARD_ENVTEST_BIN/kubectl"

state="${CHRONOSHARD_DEV_STATE:-$HOME/.cache/chronoshard/dev}"
dev=(.venv/bin/chronoshard-dev --state-dir "$state")
"${dev[@]}" up
KUBECONFIG="$("${dev[@]}" kubeconfig)"
export KUBECONFIG

sample=crds/samples/shardset.yaml
name="$(.venv/bin/python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["metadata"]["name"])' "$sample")"
say "applying $sample (ShardSet $name) and waiting for its pods to be Ready"
"$kubectl" apply -f "$sample"
# The operator creates the StatefulSet a moment after the ShardSet; then wait for every replica to be Ready.
for _ in $(seq 1 60); do
  "$kubectl" get statefulset "$name" >/dev/null 2>&1 && break
  sleep 1
done
if ! "$kubectl" rollout status "statefulset/$name" --timeout=240s; then
  "$kubectl" get pods -o wide
  say "the shard pods did not become Ready; container logs: ${dev[*]} logs POD -c node|cache|predictor"
  say "stop everything with: ${dev[*]} down"
  exit 1
fi
"$kubectl" get chronoshard
"$kubectl" get pods -o wide

# Data access is RBAC: ServiceAccount demo may read and write table "orders" (docs/security.md).
say "ServiceAccount demo with a Role on shardsets/data orders; a put and a get over TLS as demo"
"$kubectl" apply -f - <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: demo}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: $name-demo}
rules:
  - {apiGroups: [chronoshard.io], resources: [shardsets/data], resourceNames: [orders], verbs: [get, list, update, delete]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: $name-demo}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: $name-demo}
subjects: [{kind: ServiceAccount, name: demo, namespace: default}]
YAML
cli=(.venv/bin/chronoshard -s "$name" --service-account demo)
"${cli[@]}" put orders hello --value "stored over TLS as system:serviceaccount:default:demo"
"${cli[@]}" get orders hello
echo
cat <<MSG

chronoshard is running. To use kubectl yourself:
  export KUBECONFIG=$KUBECONFIG PATH=$CHRONOSHARD_ENVTEST_BIN:\$PATH
Blocks (HTTPS, a 10-minute token for ServiceAccount demo from the TokenRequest API, the CA from ConfigMap $name-ca):
  ${cli[*]} ls orders
Without --service-account the CLI sends your kubeconfig's token, which the ShardSet refuses (401) and says so.
Each shard pod has its own loopback IP (the IP column); its node answers at https://<IP>:7400, the cache at :7401.
Container logs: kubectl logs ${name}-0 -c node   (or: ${dev[*]} logs ${name}-0 -c node)
Stop everything: ${dev[*]} down      (add --purge to delete the state in $state)
MSG
