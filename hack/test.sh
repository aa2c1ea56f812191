#!/usr/bin/env bash
# The test command (README, CI): install into .venv at the locked versions, build or reuse the pinned control
# plane and tools, lint, then run unit, integration and e2e tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# -P everywhere below: run from the repo root, `python -m ...` would otherwise put the root first on sys.path,
# where our operator/ folder shadows the standard library's `operator` module.

python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
if [[ ! -x .venv/bin/python ]]; then
  echo "[test] creating .venv with $($python --version)"
  "$python" -P -m venv .venv
fi
echo "[test] installing chronoshard and its test dependencies into .venv"
.venv/bin/python -P -m pip install -q --upgrade pip
# Every version from the locks (hack/lock.sh): the runtime ones the image ships (requirements.lock) and the
# test tools and the devcluster's (requirements-dev.lock, which agrees with the first on every shared package).
.venv/bin/python -P -m pip install -q --constraint requirements.lock --constraint requirements-dev.lock \
  -e '.[ml,dev]' -e ./devcluster
.venv/bin/python -P -m pip check

echo "[test] envtest control plane (built once, then cached)"
CHRONOSHARD_ENVTEST_BIN="$(bash hack/envtest.sh)"
export CHRONOSHARD_ENVTEST_BIN
if [[ -f hack/tools.sh ]]; then
  echo "[test] helm, kubeconform, kube-linter (built once, then cached)"
  CHRONOSHARD_TOOLS_BIN="$(bash hack/tools.sh)"
  export CHRONOSHARD_TOOLS_BIN
fi

echo "[test] SeaweedFS S3 server for the object-storage tests (built once, then cached)"
CHRONOSHARD_S3_BIN="$(bash hack/s3.sh)"
export CHRONOSHARD_S3_BIN

echo "[test] Debian's Chromium for the console's browser tests (installed with apt-get once)"
CHRONOSHARD_CHROMIUM="$(bash hack/chromium.sh)"
export CHRONOSHARD_CHROMIUM

echo "[test] static checks: ruff, layering, mypy"
bash hack/lint.sh

echo "[test] pytest"
# Two workers (pytest-xdist; the work units are in tests/support/scheduling.py: the e2e tests one at a time on one
# worker, the unit and integration tests file by file on the other). Serial, the suite outgrew the 30-minute target
# (32 min 20 s of pytest at 0504656); on two workers the fresh-clone run at 4758fc1 took 19 min 44 s. The first
# two-worker run had failed: the MirrorSet e2e never saw its copies healthy because the health monitor judged their
# latency against the 250 ms default while the other worker loaded the machine; the e2e MirrorSet now allows 5000 ms,
# as the integration tests do. `bash hack/test.sh -n 0` runs it in one process.
# --durations: every log names the 40 slowest setups, calls and teardowns, where time goes first.
exec .venv/bin/pytest -q -p no:cacheprovider --durations=40 -n 2 --dist loadgroup "$@"
