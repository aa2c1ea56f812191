#!/usr/bin/env bash
# Build (once) and print the directory holding the pinned test control plane:
# kube-apiserver, kube-controller-manager, kubectl and an embedded etcd.
#
# The binaries are built from the Go module proxy by the wrapper module in hack/envtest/ and cached
# OUTSIDE the repo, keyed by a hash of that module's files, so a warm run is instant and a change
# of pins rebuilds. Progress goes to stderr; stdout is only the bin directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod="$here/envtest"
k8s_version="$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$mod/go.mod")"
inputs_hash="$(cat "$mod/go.mod" "$mod/go.sum" "$mod/etcd/main.go" "$0" | sha256sum | cut -c1-12)"
cache_root="${CHRONOSHARD_ENVTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chronoshard/envtest}"
bin="$cache_root/$k8s_version-$inputs_hash/bin"
mkdir -p "$bin"

# Module builds carry no git metadata, so stamp the version the binaries report (kubectl version, /version).
minor="$(cut -d. -f2 <<<"$k8s_version")"
version_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  version_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

log() { printf '[envtest %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

build() {
  local name="$1" pkg="$2"
  if [[ -x "$bin/$name" ]]; then
    return
  fi
  log "building $name ($pkg) — the first build of the API server takes ~10-15 min on 2 cores"
  local start=$SECONDS
  # Build into a temp name and rename, so an interrupted build never leaves a half binary cached.
  (cd "$mod" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w $version_ldflags" -o "$bin/.$name.tmp" "$pkg")
  mv "$bin/.$name.tmp" "$bin/$name"
  log "built $name in $((SECONDS - start))s"
}

build etcd ./etcd
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kubectl k8s.io/kubernetes/cmd/kubectl
echo "$bin"
