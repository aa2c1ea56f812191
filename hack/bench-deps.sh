#!/usr/bin/env bash
# One command for what tests/bench/ needs: chronoshard with the ml, dev and bench extras (and the devcluster
# distribution) into .venv, every version from the three locks (hack/lock.sh), so pip has nothing to resolve and
# cannot backtrack. Unconstrained, libcachesim's unpinned boto3 fought the kubernetes client's python-dateutil for
# half an hour. libcachesim 0.3.5 has one wheel (CPython 3.11, manylinux_2_34 x86_64: glibc 2.34 or newer); anywhere
# else pip builds its sdist, which needs a C/C++ toolchain and CMake. If the full install fails, the error is shown
# and everything but libcachesim is installed: bench_prefetch_trace.py then cannot run, every other benchmark can.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# -P: run from the repo root, our operator/ folder would otherwise shadow the standard library's `operator`.
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
if [[ ! -x .venv/bin/python ]]; then
  echo "[bench-deps] creating .venv with $($python --version)"
  "$python" -P -m venv .venv
fi
locks=(--constraint requirements.lock --constraint requirements-dev.lock --constraint requirements-bench.lock)
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "[bench-deps] installing chronoshard[ml,dev,bench] and chronoshard-devcluster at the locked versions"
if ! .venv/bin/python -P -m pip install -q "${locks[@]}" -e '.[ml,dev,bench]' -e ./devcluster 2>"$log"; then
  cat "$log" >&2
  echo "[bench-deps] the full install failed (above); installing everything but libcachesim" >&2
  mapfile -t rest < <(.venv/bin/python -P -c '
import tomllib
bench = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"]
print("\n".join(r for r in bench if not r.lower().startswith("libcachesim")))')
  .venv/bin/python -P -m pip install -q "${locks[@]}" -e '.[ml,dev]' -e ./devcluster "${rest[@]}"
fi
.venv/bin/python -P -m pip check
.venv/bin/python -P -c 'import libcachesim' 2>/dev/null && echo "[bench-deps] libcachesim $(.venv/bin/python -P \
  -c 'from importlib.metadata import version; print(version("libcachesim"))') installed" \
  || echo "[bench-deps] libcachesim is not installed: bench_prefetch_trace.py needs it"
