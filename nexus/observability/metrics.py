"""Prometheus metrics with the seed server's names and labels, correct across gunicorn workers.

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` is set (by gunicorn.conf.py) before this module is
imported, so every worker writes its values to files that ``/metrics`` sums up. The metric
objects are made once per process, at import, so building several apps never registers a
series twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess

METRICS_PATH = "/metrics"
UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_INFERENCE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests by method, route template and status.", ["method", "endpoint", "status"])
HTTP_DURATION = Histogram(
    "http_request_duration_seconds", "HTTP request latency by method and route template.", ["method", "endpoint"], buckets=_LATENCY_BUCKETS
)
PREDICTIONS = Counter("model_predictions_total", "Predictions by model and outcome (success or error).", ["model_id", "status"])
INFERENCE = Histogram(
    "model_inference_duration_seconds", "Time inside onnxruntime's run for one request.", ["model_id"], buckets=_INFERENCE_BUCKETS
)
MODELS_LOADED = Gauge("models_loaded", "Models this server serves.", multiprocess_mode="livemostrecent")
MODEL_LOAD = Histogram("model_load_duration_seconds", "Time to read, check and open a model in one worker.", buckets=_LATENCY_BUCKETS)
UPLOAD_BYTES = Counter("model_upload_bytes_total", "Bytes of models accepted by uploads.")


# Labelled children by (metric, label values). prometheus_client's own lookup takes a lock and
# re-validates the labels on every call; the label values here come from small fixed sets
# (methods, route templates, statuses, registered model ids), so the cache stays small.
_children: dict[tuple, object] = {}


def _child(metric, *labels: str):
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def observe_request(method: str, endpoint: str, status: str, seconds: float) -> None:
    if method not in _METHODS:
        method = "other"
    _child(HTTP_REQUESTS, method, endpoint, status).inc()
    _child(HTTP_DURATION, method, endpoint).observe(seconds)


def observe_inference(model_id: str, seconds: float) -> None:
    """Note how long onnxruntime ran for one request on a registered model."""
    _child(INFERENCE, model_id).observe(seconds)


# When each model's last-success gauge was last written by this process: it is written at most every
# LAST_PREDICTION_EVERY_S, since a write to the multiprocess file costs about a microsecond.
_last_written: dict[str, float] = {}
LAST_PREDICTION_EVERY_S = 0.1


def prediction_done(model_id: str, outcome: str, seconds: float) -> None:
    """Count a prediction as ``success`` or ``error`` (from the status its response carried), with its
    whole request time, and note when the model last answered well (Triton's statistics read these)."""
    _child(PREDICTIONS, model_id, outcome).inc()
    _child(PREDICTION_SECONDS, model_id, outcome).inc(seconds)
    if outcome == "success":
        now = time.time()
        if now - _last_written.get(model_id, 0.0) >= LAST_PREDICTION_EVERY_S:
            _last_written[model_id] = now
            _child(LAST_PREDICTION, model_id).set(now)


# The registry reports to this module through these two functions (it knows nothing of Prometheus).
def models_changed(count: int) -> None:
    MODELS_LOADED.set(count)


def model_loaded(seconds: float) -> None:
    MODEL_LOAD.observe(seconds)


def upload_accepted(size: int) -> None:
    UPLOAD_BYTES.inc(size)


# -- Triton's statistics extension (nexus/api/triton.py) ------------------------------------------
# Two series the existing ones do not give: how long whole prediction requests took, by outcome
# (Triton's success/fail durations), and when a model last answered one (Triton's last_inference).

PREDICTION_SECONDS = Counter(
    "model_prediction_seconds", "Seconds spent answering prediction requests (the whole request) by model and outcome.", ["model_id", "status"]
)
LAST_PREDICTION = Gauge(
    "model_last_prediction_timestamp_seconds", "When the model last answered a prediction successfully (Unix time).", ["model_id"],
    multiprocess_mode="max",  # the latest of every worker's, a dead worker's included
)


@dataclass
class ModelStatistics:
    """One model's prediction totals over every worker of this server, as the metrics hold them."""

    success: int = 0  # predictions answered 2xx/3xx (model_predictions_total{status="success"})
    failure: int = 0  # predictions answered with an error (status="error")
    success_seconds: float = 0.0  # whole-request time of those (model_prediction_seconds_total)
    failure_seconds: float = 0.0
    runs: int = 0  # onnxruntime runs that completed (model_inference_duration_seconds_count)
    run_seconds: float = 0.0  # time inside those runs (model_inference_duration_seconds_sum)
    last_success: float = 0.0  # Unix time of the last successful prediction; 0 if none


def model_statistics(model_ids: Iterable[str]) -> dict[str, ModelStatistics]:
    """Return the totals of each model in ``model_ids``, summed over all gunicorn workers.

    Under gunicorn (``PROMETHEUS_MULTIPROC_DIR`` set) the workers' files are merged by
    prometheus_client's multiprocess collector, the same values ``/metrics`` shows; otherwise
    this process's registry is read.
    """
    stats = {model_id: ModelStatistics() for model_id in model_ids}
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    for family in registry.collect():
        if family.name not in _STATISTICS_FAMILIES:
            continue
        for sample in family.samples:
            entry = stats.get(sample.labels.get("model_id"))
            if entry is None:
                continue
            name, status, value = sample.name, sample.labels.get("status"), sample.value
            if name == "model_predictions_total":
                if status == "success":
                    entry.success += round(value)
                elif status == "error":
                    entry.failure += round(value)
            elif name == "model_prediction_seconds_total":
                if status == "success":
                    entry.success_seconds += value
                elif status == "error":
                    entry.failure_seconds += value
            elif name == "model_inference_duration_seconds_count":
                entry.runs += round(value)
            elif name == "model_inference_duration_seconds_sum":
                entry.run_seconds += value
            elif name == "model_last_prediction_timestamp_seconds":
                entry.last_success = max(entry.last_success, value)
    return stats


_STATISTICS_FAMILIES = frozenset({
    "model_predictions", "model_prediction_seconds", "model_inference_duration_seconds", "model_last_prediction_timestamp_seconds",
})
