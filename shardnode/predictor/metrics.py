"""Prometheus metrics of `chronoshard-predictor` (own registry so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class PredictorMetrics:
    """Everything the predictor exports; labels carry table names and model kinds, nothing secret."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.accesses = Counter("chronoshard_predictor_accesses", "Access-log entries consumed", registry=r)
        self.log_gaps = Counter("chronoshard_predictor_access_log_gaps",
                                "Times the cache's access log had dropped entries we had not read", registry=r)
        self.hints_sent = Counter("chronoshard_predictor_hints_sent", "Prefetch hints sent to the cache", ["table"],
                                  registry=r)
        self.hints_used = Counter("chronoshard_predictor_hints_used",
                                  "Sent hints whose block was requested within the horizon", registry=r)
        self.hints_wasted = Counter("chronoshard_predictor_hints_wasted",
                                    "Sent hints whose block was not requested within the horizon", registry=r)
        self.wasted_bytes = Counter("chronoshard_predictor_wasted_bytes", "Bytes of wasted hints (as logged)",
                                    registry=r)
        self.hints_dropped = Counter("chronoshard_predictor_hints_dropped",
                                     "Candidates above threshold not sent, by reason", ["reason"], registry=r)
        self.precision = Gauge("chronoshard_predictor_precision",
                               "Used / resolved sent hints since start (NaN before the first)", registry=r)
        self.window_precision = Gauge("chronoshard_predictor_window_precision",
                                      "Precision of the last feedback window at the threshold in force", registry=r)
        self.recall = Gauge("chronoshard_predictor_recall",
                            "Used hints / (used hints + requests that missed the cache)", registry=r)
        self.threshold = Gauge("chronoshard_predictor_threshold", "Score threshold in force (after feedback)",
                               registry=r)
        self.budget_factor = Gauge("chronoshard_predictor_budget_factor",
                                   "Share of the configured hint budget in force (feedback)", registry=r)
        self.model_loaded = Gauge("chronoshard_predictor_model_loaded", "1 if a model is loaded and hints flow",
                                  registry=r)
        self.model_kind = Gauge("chronoshard_predictor_model_kind", "1 for the kind of the loaded model", ["kind"],
                                registry=r)
        self.trainings = Counter("chronoshard_predictor_trainings", "Background training runs by result",
                                 ["result"], registry=r)
        self.train_seconds = Gauge("chronoshard_predictor_last_training_seconds", "Duration of the last training",
                                   registry=r)
        self.forecast = Gauge("chronoshard_predictor_forecast_requests_per_second",
                              "Forecast request rate of a table for the n-th next window", ["table", "window"],
                              registry=r)
        self.config_errors = Counter("chronoshard_predictor_config_errors",
                                     "predictor.json loads that failed (previous settings kept)", registry=r)
        self.cache_errors = Counter("chronoshard_predictor_cache_errors", "Failed calls to the cache, by call",
                                    ["call"], registry=r)
        # Table-key pipeline (keyPrefetch): hints for keys the cache should unwrap ahead of need.
        self.key_hints_sent = Counter("chronoshard_predictor_key_hints_sent", "Key prefetch hints sent to the cache",
                                      registry=r)
        self.key_hints_used = Counter("chronoshard_predictor_key_hints_used",
                                      "Sent key hints whose table was read within the horizon", registry=r)
        self.key_hints_wasted = Counter("chronoshard_predictor_key_hints_wasted",
                                        "Sent key hints whose table was not read within the horizon", registry=r)
        self.key_hints_dropped = Counter("chronoshard_predictor_key_hints_dropped",
                                         "Key candidates above threshold not sent, by reason", ["reason"], registry=r)
        self.key_precision = Gauge("chronoshard_predictor_key_precision",
                                   "Used / resolved sent key hints since start (NaN before the first)", registry=r)
        self.key_threshold = Gauge("chronoshard_predictor_key_threshold",
                                   "Key hint score threshold in force (after feedback)", registry=r)
        self.key_budget_factor = Gauge("chronoshard_predictor_key_budget_factor",
                                       "Share of maxKeysPerSecond in force (feedback)", registry=r)
        self.key_model_loaded = Gauge("chronoshard_predictor_key_model_loaded",
                                      "1 if a table-key model is loaded", registry=r)
        self.key_trainings = Counter("chronoshard_predictor_key_trainings",
                                     "Background trainings of the table-key model by result", ["result"], registry=r)
