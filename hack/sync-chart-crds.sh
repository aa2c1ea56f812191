#!/usr/bin/env bash
# Copy the CRDs (single source: crds/*.yaml) into the Helm chart's crds/ folder, byte for byte.
# tests/unit/charts/test_chart_crds.py fails when the two differ, so run this after editing crds/.
# The chart's kopf-peering.yaml (Kopf's own peering CRDs) is the chart's own file and is kept.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/charts/chronoshard/crds"
mkdir -p "$dest"
# Drop copies of CRDs that no longer exist in crds/.
for f in "$dest"/*.yaml; do
  [[ -e "$f" ]] || continue
  name="$(basename "$f")"
  if [[ "$name" != kopf-peering.yaml && ! -e "$root/crds/$name" ]]; then
    rm -- "$f"
  fi
done
for f in "$root"/crds/*.yaml; do
  cp -- "$f" "$dest/$(basename "$f")"
done
echo "synced $(ls "$root"/crds/*.yaml | wc -l) CRDs into $dest" >&2
