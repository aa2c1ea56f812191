#!/usr/bin/env bash
# Build (once) and print the path of SeaweedFS's `weed` binary: the real S3-compatible server the
# object-storage tests (cold tier, backup, disaster-recovery bootstrap) run against.
#
# Built from the Go module proxy at a pinned version into a cache directory OUTSIDE the repo
# (~/.cache/chronoshard/tools/weed-<version>/bin/weed), like hack/tools.sh, so a warm run is instant
# and a change of pin rebuilds. stdout is only the binary's path; progress goes to stderr.
#
# `go install pkg@version` refuses a module whose go.mod has replace directives, so the binary is built
# from a throwaway wrapper module that requires the pinned SeaweedFS version (its own replace directives
# do not apply to a dependency; the wrapper copies them in when present so the build matches upstream's).
#
# Usage: hack/s3.sh     build if needed, print the weed binary path
set -euo pipefail

MODULE="github.com/seaweedfs/seaweedfs"
VERSION="v0.0.0-20261109003541-7506e5f91cd6"
PKG="$MODULE/weed"

cache_root="${CHRONOSHARD_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chronoshard/tools}"
dir="$cache_root/weed-$VERSION/bin"
bin="$dir/weed"

log() { printf '[s3 %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache_root"
# One build at a time: a second caller (another test session) waits for the first instead of
# building the same thing twice on 2 cores.
exec 9>"$cache_root/.weed.lock"
flock 9
if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi

log "building weed $VERSION (a cold build takes 10-20 min on 2 cores)"
start=$SECONDS
work="$(mktemp -d "$cache_root/.weed.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init chronoshard.local/weedbuild >/dev/null 2>&1
GOFLAGS="${GOFLAGS:-} -mod=mod" go get "$MODULE@$VERSION" >&2
# Upstream's replace directives (if any) pin forks its build needs; a dependency's are ignored by Go,
# so carry them over into the wrapper.
upstream_mod="$(go env GOMODCACHE)/$MODULE@$VERSION/go.mod"
if grep -q '^replace\|^\s*replace' "$upstream_mod" 2>/dev/null; then
  go mod edit -json "$upstream_mod" |
    python3 -c 'import json,sys
for r in json.load(sys.stdin).get("Replace") or []:
    old = r["Old"]["Path"] + ("@" + r["Old"]["Version"] if r["Old"].get("Version") else "")
    new = r["New"]["Path"] + ("@" + r["New"]["Version"] if r["New"].get("Version") else "")
    if not r["New"]["Path"].startswith("."):
        print(f"-replace={old}={new}")' |
    xargs -r go mod edit

fi
CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=mod" go build -trimpath -ldflags "-s -w" -o "$work/weed" "$PKG" >&2
mkdir -p "$dir"
# Rename into place so an interrupted build never leaves a half binary cached.
mv "$work/weed" "$bin"
log "built weed in $((SECONDS - start))s"
echo "$bin"
