"""The Grafana dashboard queries only metric names the operator really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from chronoshard.operator import metrics
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

CHART = Path(__file__).resolve().parents[3] / "charts" / "chronoshard"
DASHBOARD = CHART / "dashboards" / "chronoshard-operator.json"

# PromQL words that are not metric names (functions, aggregations, keywords used in our queries).
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "by",
    "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "label_values",
    "topk", "bottomk", "abs", "clamp_min", "clamp_max", "offset",
}


def _exprs(dashboard: dict) -> list[str]:
    found = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                # "query" is PromQL only in query variables (a datasource variable's query is a type).
                if isinstance(value, str) and (key == "expr" or (key == "query" and node.get("type") == "query")):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    return found


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (label matchers, groupings, ranges and strings removed)."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    expr = re.sub(r",\s*[a-z_]+\s*\)", ")", expr)  # label_values(metric, label)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("$")}


def _exported_sample_names() -> set[str]:
    # Touch every metric once so labelled series (and histogram buckets) exist in the exposition.
    metrics.observe_reconcile("ShardSet", "success", 0.1)
    metrics.record_error("ShardSet", "test")
    metrics.set_managed("ShardSet", 1)
    text = generate_latest(REGISTRY).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metric_name_extraction_sees_what_a_query_reads() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, kind) (rate(a_bucket{namespace=~"$ns"}[5m])))'
            ' / on (kind) b_total')
    assert metric_names(expr) == {"a_bucket", "b_total"}


def test_dashboard_is_valid_grafana_json_with_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert all(panel["targets"] for panel in dashboard["panels"])


def test_every_dashboard_query_uses_exported_metrics_only() -> None:
    exported = _exported_sample_names()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = _exprs(dashboard)
    assert len(exprs) >= 10
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in query {expr!r}"
        missing = names - exported
        assert not missing, f"{expr!r} reads {missing}, not exported by chronoshard.operator.metrics"


def test_dashboard_covers_reconciles_durations_errors_and_managed_objects() -> None:
    used = set().union(*(metric_names(e) for e in _exprs(json.loads(DASHBOARD.read_text()))))
    for name in ("chronoshard_operator_reconciles_total", "chronoshard_operator_reconcile_duration_seconds_bucket",
                 "chronoshard_operator_errors_total", "chronoshard_operator_managed_objects"):
        assert name in used
