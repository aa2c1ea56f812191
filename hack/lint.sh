#!/usr/bin/env bash
# The static checks (part of hack/test.sh): ruff (style, imports, complexity cap), the layering contracts
# (import-linter, [tool.importlinter] in pyproject.toml) and mypy ([tool.mypy]). Fails on the first broken one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${VENV:-.venv}"

# Both tools resolve modules from folders, and our folders are not named like their import names
# (operator/ is chronoshard.operator), so link them under one chronoshard/ namespace folder for them.
tree=build/typecheck/chronoshard
mkdir -p "$tree"
for dir in operator shardnode devcluster; do
  ln -sfn "../../../$dir" "$tree/$dir"
done

echo "[lint] ruff"
"$venv/bin/ruff" check .
echo "[lint] import-linter (layering)"
PYTHONPATH=build/typecheck "$venv/bin/lint-imports" --no-cache
echo "[lint] mypy"
"$venv/bin/mypy" -p chronoshard.operator -p chronoshard.shardnode -p chronoshard.devcluster
