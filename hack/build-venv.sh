#!/usr/bin/env bash
# Build chronoshard's wheel from SRC and install it, with the `ml` extra, into a fresh virtualenv at
# VENV, every dependency at the version pinned in SRC/requirements.lock.
#
# The container image's builder stage runs exactly this script, and tests/unit/test_dockerfile.py
# runs it too, so the test exercises the image's install steps (we cannot build images here).
# Fails if the installed set differs from the lock (a dependency added to pyproject but not locked),
# so the image never floats an unpinned package. Usage: hack/build-venv.sh SRC VENV [PYTHON]
set -euo pipefail
src="$(cd "$1" && pwd)"
venv="$(realpath -m "$2")"
python="${3:-python3}"
wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT
# Never run Python from the source root: its folder operator/ would shadow the standard library's
# `operator` module (python -m puts the working directory first on sys.path).
cd "$wheels"

"$python" -P -m pip wheel --quiet --no-deps --wheel-dir "$wheels" "$src"
"$python" -P -m venv "$venv"
wheel="$(find "$wheels" -name 'chronoshard-*.whl' -print -quit)"
# Bytecode is compiled afterwards on every core at once: pip compiles file by file, which was half the time.
"$venv/bin/python" -P -m pip install --quiet --disable-pip-version-check --no-compile \
  --constraint "$src/requirements.lock" "$wheel[ml]"
"$venv/bin/python" -P -m compileall -q -j 0 "$venv/lib" >/dev/null
"$venv/bin/python" -P -m pip check

# Every installed distribution must be pinned in the lock at the same version.
"$venv/bin/python" - "$src/requirements.lock" <<'PY'
import sys
from importlib.metadata import distributions

lock = {}
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        name, version = line.split("==")
        lock[name.lower().replace("_", "-")] = version
skip = {"chronoshard", "pip", "setuptools", "wheel"}
unpinned = sorted(
    f"{d.metadata['Name']}=={d.version}"
    for d in distributions()
    if (n := d.metadata["Name"].lower().replace("_", "-")) not in skip and lock.get(n) != d.version
)
if unpinned:
    sys.exit(f"installed but not pinned in requirements.lock (run hack/lock.sh): {', '.join(unpinned)}")
PY
