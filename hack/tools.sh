#!/usr/bin/env bash
# Build (once) and print the directory holding the pinned chart tools: helm, kubeconform, kube-score.
#
# Each tool is built from the Go module proxy at a pinned version into its own cache directory
# OUTSIDE the repo (~/.cache/chronoshard/tools/<name>-<version>/bin), so a warm run is instant and a
# change of pin rebuilds. stdout is only the bin directory of the requested tools (a directory of
# symlinks to every tool); progress goes to stderr.
#
# kube-score stands in for kube-linter: kube-linter's module lives on a vanity host
# (golang.stackrox.io) that the module proxy allowlist here does not serve.
#
# Usage: hack/tools.sh            build all tools, print the bin dir
#        hack/tools.sh helm       build only helm (still prints the shared bin dir)
set -euo pipefail

# name|module path of the main package|version. Versions chosen to build with Go >= 1.26.
TOOLS=(
  "helm|helm.sh/helm/v4/cmd/helm|v4.3.1"
  "kubeconform|github.com/yannh/kubeconform/cmd/kubeconform|v0.8.0"
  "kube-score|github.com/zegl/kube-score/cmd/kube-score|v1.20.0"
)

cache_root="${CHRONOSHARD_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chronoshard/tools}"
links="$cache_root/bin"
mkdir -p "$links"

log() { printf '[tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

build() {
  local name="$1" pkg="$2" version="$3"
  local dir="$cache_root/$name-$version/bin"
  if [[ ! -x "$dir/$name" ]]; then
    log "building $name $version from $pkg (a few minutes on 2 cores the first time)"
    local start=$SECONDS tmp
    # Build into a temp dir and rename, so an interrupted build never leaves a half binary cached.
    tmp="$(mktemp -d "$cache_root/.$name.XXXXXX")"
    # The projects' Makefiles stamp the version via -ldflags; go install does not, so it is injected
    # here (helm also needs it to compare a chart's kubeVersion; `<tool> version` shows the pin).
    local ldflags="-s -w"
    if [[ "$name" == helm ]]; then
      ldflags+=" -X helm.sh/helm/v4/internal/version.version=$version"
    else
      ldflags+=" -X main.version=$version"
    fi
    GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=mod" \
      go install -trimpath -ldflags "$ldflags" "$pkg@$version"
    mkdir -p "$dir"
    mv "$tmp/$name" "$dir/$name"
    rmdir "$tmp"
    log "built $name in $((SECONDS - start))s"
  fi
  ln -sfn "$dir/$name" "$links/$name"
}

want=("$@")
for entry in "${TOOLS[@]}"; do
  IFS='|' read -r name pkg version <<<"$entry"
  if [[ ${#want[@]} -eq 0 ]] || [[ " ${want[*]} " == *" $name "* ]]; then
    build "$name" "$pkg" "$version"
  fi
done
echo "$links"
