"""The chart's CRDs are byte-identical copies of crds/ (single source; hack/sync-chart-crds.sh copies them)."""

from __future__ import annotations

import yaml

from .helpers import CHART, REPO

CHART_ONLY = {"kopf-peering.yaml"}


def test_chart_crds_equal_the_source_crds() -> None:
    source = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml") if p.name not in CHART_ONLY}
    assert source, "no CRDs in crds/"
    assert set(chart) == set(source), "run hack/sync-chart-crds.sh"
    drifted = sorted(name for name in source if chart[name] != source[name])
    assert not drifted, f"chart CRDs differ from crds/: {drifted} (run hack/sync-chart-crds.sh)"


def test_chart_ships_kopf_peering_crds() -> None:
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text()))
    scopes = {d["metadata"]["name"]: d["spec"]["scope"] for d in docs}
    assert scopes == {"clusterkopfpeerings.kopf.dev": "Cluster", "kopfpeerings.kopf.dev": "Namespaced"}
