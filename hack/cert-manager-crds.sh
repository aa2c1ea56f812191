#!/usr/bin/env bash
# Fetch (once) and print the directory holding cert-manager's real CRDs, for the operator's cert-manager tests.
#
# The CRD YAMLs ship inside the cert-manager Go module (deploy/crds/); `go mod download` brings the module from
# the Go module proxy into the module cache, and the CRDs are copied into a cache directory OUTSIDE the repo
# (~/.cache/chronoshard/cert-manager-crds/<version>/), with the Helm template expressions in their labels
# replaced by plain values so that the API server accepts them as they are. The YAML is never committed.
# stdout is only that directory; progress goes to stderr.
#
# Usage: hack/cert-manager-crds.sh
set -euo pipefail

VERSION="${CHRONOSHARD_CERT_MANAGER_VERSION:-v1.16.5}"
MODULE="github.com/cert-manager/cert-manager"
cache_root="${CHRONOSHARD_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chronoshard}"
dest="$cache_root/cert-manager-crds/$VERSION"

if [[ ! -s "$dest/crd-certificates.yaml" ]]; then
  command -v go >/dev/null || { echo "hack/cert-manager-crds.sh: needs go (the Go module proxy)" >&2; exit 1; }
  echo "[cert-manager-crds] downloading $MODULE@$VERSION from the Go module proxy" >&2
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  # Outside any module: `go mod download` of a module@version needs no go.mod of ours.
  dir="$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "$MODULE@$VERSION" \
         | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  [[ -d "$dir/deploy/crds" ]] || { echo "no deploy/crds in $dir" >&2; exit 1; }
  mkdir -p "${dest%/*}"
  tmp="$(mktemp -d "${dest%/*}/.tmp.XXXXXX")"
  for f in "$dir"/deploy/crds/crd-*.yaml; do
    sed -e "s/'{{ template \"cert-manager.name\" . }}'/cert-manager/" \
        -e "s/'{{ .Release.Name }}'/cert-manager/" "$f" > "$tmp/$(basename "$f")"
  done
  rm -rf "$dest"
  mv "$tmp" "$dest"
fi
echo "$dest"
