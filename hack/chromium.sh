#!/usr/bin/env bash
# Print the path of Debian's Chromium (/usr/bin/chromium), the browser the console's Playwright tests drive
# through `executable_path`. Installs the `chromium` package with apt-get when it is missing: Playwright's own
# browser download cannot work on a closed network, Debian's package can. stdout is only the path; progress goes
# to stderr (like hack/envtest.sh and hack/s3.sh).
#
# Usage: hack/chromium.sh     install if needed, print /usr/bin/chromium
set -euo pipefail

bin=/usr/bin/chromium
log() { printf '[chromium %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi

sudo=()
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || { log "not root and no sudo: install Debian's chromium package by hand"; exit 1; }
  sudo=(sudo)
fi
# One install at a time: apt's own lock would make a second caller fail instead of wait.
lock="${XDG_CACHE_HOME:-$HOME/.cache}/chronoshard/.chromium.lock"
mkdir -p "$(dirname "$lock")"
exec 9>"$lock"
flock 9
if [[ ! -x "$bin" ]]; then
  log "installing Debian's chromium (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update >&2
  "${sudo[@]}" apt-get install -y --no-install-recommends chromium >&2
fi
[[ -x "$bin" ]] || { log "apt-get installed chromium but $bin is missing"; exit 1; }
echo "$bin"
