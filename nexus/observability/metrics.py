"""Prometheus metrics with the seed server's names and labels, correct across gunicorn workers.

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` is set (by gunicorn.conf.py) before this module is
imported, so every worker writes its values to files that ``/metrics`` sums up. The metric
objects are made once per process, at import, so building several apps never registers a
series twice.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from nexus.config import MB

METRICS_PATH = "/metrics"
UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_INFERENCE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests by method, route template and status.", ["method", "endpoint", "status"])
HTTP_DURATION = Histogram(
    "http_request_duration_seconds", "HTTP request latency by method and route template.", ["method", "endpoint"], buckets=_LATENCY_BUCKETS
)
PREDICTIONS = Counter(
    "model_predictions_total", "Predictions by model, the version that answered, and outcome (success or error).",
    ["model_id", "version", "status"],
)
INFERENCE = Histogram(
    "model_inference_duration_seconds", "Time inside onnxruntime's run for one request, by model and version.",
    ["model_id", "version"], buckets=_INFERENCE_BUCKETS,
)
MODELS_LOADED = Gauge("models_loaded", "Models this server serves: open in the worker that last said (under a memory "
                      "budget, each worker opens its own share).", multiprocess_mode="livemostrecent")
MODELS_AVAILABLE = Gauge("models_available", "Models in the model directory that can answer, open or not (their default "
                         "version neither failed to load nor is unloaded).",
                         multiprocess_mode="livemostrecent")
MODEL_LOAD = Histogram("model_load_duration_seconds", "Time to read, check and open a model in one worker.", buckets=_LATENCY_BUCKETS)
MODEL_LOADS = Counter("model_loads_total", "Model versions opened by a worker (at start, after a change, or on first use under a budget).")
MODEL_EVICTIONS = Counter("model_evictions_total", "Model versions a worker closed to stay under NEXUS_MEMORY_BUDGET_MB.")
MODELS_MEMORY = Gauge("models_memory_bytes", "What each worker holds of the models it has open, as measured at upload "
                      "(the memory budget counts this); one series per worker.", multiprocess_mode="liveall")
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


def observe_inference(model_id: str, version: str, seconds: float) -> None:
    """Note how long onnxruntime ran for one request on a registered model version."""
    _child(INFERENCE, model_id, version).observe(seconds)


# When each model's last-success gauge was last written by this process: it is written at most every
# LAST_PREDICTION_EVERY_S, since a write to the multiprocess file costs about a microsecond.
_last_written: dict[tuple[str, str], float] = {}
LAST_PREDICTION_EVERY_S = 0.1


def prediction_done(model_id: str, version: str, outcome: str, seconds: float) -> None:
    """Count a prediction as ``success`` or ``error`` (from the status its response carried), with its
    whole request time, and note when the version last answered well (Triton's statistics read these)."""
    _child(PREDICTIONS, model_id, version, outcome).inc()
    _child(PREDICTION_SECONDS, model_id, version, outcome).inc(seconds)
    if outcome == "success":
        now = time.time()
        if now - _last_written.get((model_id, version), 0.0) >= LAST_PREDICTION_EVERY_S:
            _last_written[model_id, version] = now
            _child(LAST_PREDICTION, model_id, version).set(now)


# -- gRPC (nexus/rpc) ------------------------------------------------------------------------------

GRPC_REQUESTS = Counter("grpc_requests_total", "gRPC calls by method and status code.", ["method", "code"])
GRPC_DURATION = Histogram("grpc_request_duration_seconds", "gRPC call latency by method.", ["method"], buckets=_LATENCY_BUCKETS)


def observe_rpc(method: str, code: str, seconds: float) -> None:
    _child(GRPC_REQUESTS, method, code).inc()
    _child(GRPC_DURATION, method).observe(seconds)


# -- shadow versions (nexus/shadow.py) ------------------------------------------------------------

SHADOW_RUNS = Counter(
    "model_shadow_predictions_total",
    "Copies of requests sent to shadow versions, by outcome: success, error, dropped (queue full), "
    "unavailable (version not loaded in the worker).",
    ["model_id", "version", "status"],
)
SHADOW_AGREEMENT = Counter(
    "model_shadow_agreement_total", "Shadow runs whose answer agreed (or not) with the one the client got.",
    ["model_id", "version", "result"],
)
SHADOW_DIFFERENCE = Histogram(
    "model_shadow_max_abs_difference", "Largest absolute difference between a shadow's numeric answer and the client's.",
    ["model_id", "version"], buckets=(1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0),
)
SHADOW_INFERENCE = Histogram(
    "model_shadow_duration_seconds", "Time a shadow run took (decoding, running and comparing).",
    ["model_id", "version"], buckets=_INFERENCE_BUCKETS,
)


def shadow_done(model_id: str, version: str, status: str, seconds: float | None = None,
                agree: bool | None = None, difference: float | None = None) -> None:
    """Count one shadow copy by outcome; for one that ran, its time, agreement and difference."""
    _child(SHADOW_RUNS, model_id, version, status).inc()
    if seconds is not None:
        _child(SHADOW_INFERENCE, model_id, version).observe(seconds)
    if agree is not None:
        _child(SHADOW_AGREEMENT, model_id, version, "agree" if agree else "disagree").inc()
    if difference is not None:
        _child(SHADOW_DIFFERENCE, model_id, version).observe(difference)


# -- prediction records and labels (nexus/records) ---------------------------------------------------

FEEDBACK = Counter(
    "model_feedback_total", "Labels joined with a classifier's prediction, by whether the prediction was right (correct, incorrect).",
    ["model_id", "version", "outcome"],
)
FEEDBACK_ERROR = Histogram(
    "model_feedback_abs_error", "Absolute error of a regressor's prediction, per label joined with it.", ["model_id", "version"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 50.0, 100.0, 1000.0),
)
RECORDS_WRITTEN = Counter("model_records_written_total", "Prediction records written to the records database.")
RECORDS_DROPPED = Counter(
    "model_records_dropped_total", "Prediction records dropped: the worker's queue was full while the database was slow or down.",
)


def feedback_counted(model_id: str, version: str, correct: bool | None, error: float | None) -> None:
    """Count one label joined with its prediction: right or wrong (classifier), or its absolute error (regressor)."""
    if correct is not None:
        _child(FEEDBACK, model_id, version, "correct" if correct else "incorrect").inc()
    elif error is not None:
        _child(FEEDBACK_ERROR, model_id, version).observe(abs(error))


def records_written(count: int) -> None:
    RECORDS_WRITTEN.inc(count)


def records_dropped(count: int) -> None:
    RECORDS_DROPPED.inc(count)


# -- monitoring (nexus/monitoring) ------------------------------------------------------------------
# The monitoring series are computed at each scrape from the workers' counts files (exporter.py):
# their names and labels are declared here, once.

MONITORING_ERRORS = Counter(
    "model_monitoring_errors_total", "Predictions whose monitoring failed (the prediction itself was answered).",
    ["model_id", "version"],
)
_failures_logged: set[tuple[str, str]] = set()


def monitoring_failed(model_id: str, version: str) -> None:
    """Count a monitoring failure; log the first of each version with its traceback."""
    _child(MONITORING_ERRORS, model_id, version).inc()
    if (model_id, version) not in _failures_logged:
        _failures_logged.add((model_id, version))
        logging.getLogger("nexus.monitoring").exception("monitoring failed", extra={"model_id": model_id, "version": version})


CONFIDENCE_SERIES = ("model_prediction_confidence", "Top-class probability of each prediction of a classifier.", ("model_id", "version"))
CLASS_SERIES = ("model_predicted_class", "Predictions by predicted class (the first 100 classes; the rest as 'other').",
                ("model_id", "version", "class"))
OUTPUT_SERIES = ("model_output_value", "Values of the watched output of a model that is not a classifier.", ("model_id", "version"))
DRIFT_SERIES = ("model_feature_drift", "Drift of one input feature from the version's reference over the window, by method (psi, js).",
                ("model_id", "version", "feature", "method"))
STATUS_SERIES = ("model_drift_status", "Worst drift verdict of the version's features (0 ok, 1 warn, 2 alert).", ("model_id", "version"))
# What /metrics shows of them: series name -> labels (for checks of dashboards and alert rules).
COMPUTED_SERIES = {
    **{f"{CONFIDENCE_SERIES[0]}{suffix}": CONFIDENCE_SERIES[2] for suffix in ("_bucket", "_sum", "_count")},
    f"{CLASS_SERIES[0]}_total": CLASS_SERIES[2],
    **{f"{OUTPUT_SERIES[0]}{suffix}": OUTPUT_SERIES[2] for suffix in ("_sum", "_count")},
    DRIFT_SERIES[0]: DRIFT_SERIES[2],
    STATUS_SERIES[0]: STATUS_SERIES[2],
}


def monitoring_families(reports: Iterable[tuple[str, str, dict]]) -> list:
    """The monitoring series of each (model id, version, counts summary) as Prometheus metric families."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, SummaryMetricFamily

    confidence = HistogramMetricFamily(CONFIDENCE_SERIES[0], CONFIDENCE_SERIES[1], labels=CONFIDENCE_SERIES[2])
    classes = CounterMetricFamily(CLASS_SERIES[0], CLASS_SERIES[1], labels=CLASS_SERIES[2])
    output = SummaryMetricFamily(OUTPUT_SERIES[0], OUTPUT_SERIES[1], labels=OUTPUT_SERIES[2])
    drift = GaugeMetricFamily(DRIFT_SERIES[0], DRIFT_SERIES[1], labels=DRIFT_SERIES[2])
    status = GaugeMetricFamily(STATUS_SERIES[0], STATUS_SERIES[1], labels=STATUS_SERIES[2])
    for model_id, version, summary in reports:
        labels = [model_id, version]
        if summary.get("confidence") is not None:
            found = summary["confidence"]
            cumulative, buckets = 0, []
            for bound, count in zip(found["buckets"], found["counts"], strict=True):
                cumulative += count
                buckets.append((repr(float(bound)), cumulative))
            buckets.append(("+Inf", cumulative))
            confidence.add_metric(labels, buckets, found["sum"])
            for name, count in found["classes"].items():
                classes.add_metric([*labels, name], count)
        if summary.get("output") is not None:
            output.add_metric(labels, summary["output"]["count"], summary["output"]["sum"])
        for feature, method, value in summary.get("drift", ()):
            drift.add_metric([*labels, feature, method], value)
        if summary.get("status") is not None:
            status.add_metric(labels, summary["status"])
    return [confidence, classes, output, drift, status]


# The registry reports to this module through these two functions (it knows nothing of Prometheus).
def models_changed(count: int, memory_mb: float = 0.0) -> None:
    MODELS_LOADED.set(count)
    MODELS_MEMORY.set(memory_mb * MB)


def models_available(count: int) -> None:
    MODELS_AVAILABLE.set(count)


def model_loaded(seconds: float) -> None:
    MODEL_LOAD.observe(seconds)
    MODEL_LOADS.inc()


def models_evicted(count: int) -> None:
    MODEL_EVICTIONS.inc(count)


def upload_accepted(size: int) -> None:
    UPLOAD_BYTES.inc(size)


# -- Triton's statistics extension (nexus/api/triton.py) ------------------------------------------
# Two series the existing ones do not give: how long whole prediction requests took, by outcome
# (Triton's success/fail durations), and when a model last answered one (Triton's last_inference).

PREDICTION_SECONDS = Counter(
    "model_prediction_seconds", "Seconds spent answering prediction requests (the whole request) by model, version and outcome.",
    ["model_id", "version", "status"],
)
LAST_PREDICTION = Gauge(
    "model_last_prediction_timestamp_seconds", "When the version last answered a prediction successfully (Unix time).",
    ["model_id", "version"],
    multiprocess_mode="max",  # the latest of every worker's, a dead worker's included
)


@dataclass
class ModelStatistics:
    """One model version's prediction totals over every worker of this server, as the metrics hold them."""

    success: int = 0  # predictions answered 2xx/3xx (model_predictions_total{status="success"})
    failure: int = 0  # predictions answered with an error (status="error")
    success_seconds: float = 0.0  # whole-request time of those (model_prediction_seconds_total)
    failure_seconds: float = 0.0
    runs: int = 0  # onnxruntime runs that completed (model_inference_duration_seconds_count)
    run_seconds: float = 0.0  # time inside those runs (model_inference_duration_seconds_sum)
    last_success: float = 0.0  # Unix time of the last successful prediction; 0 if none


def model_statistics(versions: Iterable[tuple[str, str]]) -> dict[tuple[str, str], ModelStatistics]:
    """Return the totals of each (model id, version) in ``versions``, summed over all gunicorn workers.

    Under gunicorn (``PROMETHEUS_MULTIPROC_DIR`` set) the workers' files are merged by
    prometheus_client's multiprocess collector, the same values ``/metrics`` shows; otherwise
    this process's registry is read.
    """
    stats = {key: ModelStatistics() for key in versions}
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    for family in registry.collect():
        if family.name not in _STATISTICS_FAMILIES:
            continue
        for sample in family.samples:
            entry = stats.get((sample.labels.get("model_id"), sample.labels.get("version")))
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
