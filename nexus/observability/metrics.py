"""Prometheus metrics with the seed server's names and labels, correct across gunicorn workers.

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` is set (by gunicorn.conf.py) before this module is
imported, so every worker writes its values to files that ``/metrics`` sums up. The metric
objects are made once per process, at import, so building several apps never registers a
series twice.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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


def prediction_done(model_id: str, outcome: str) -> None:
    """Count a prediction as ``success`` or ``error``, from the status its response carried."""
    _child(PREDICTIONS, model_id, outcome).inc()


# The registry reports to this module through these two functions (it knows nothing of Prometheus).
def models_changed(count: int) -> None:
    MODELS_LOADED.set(count)


def model_loaded(seconds: float) -> None:
    MODEL_LOAD.observe(seconds)


def upload_accepted(size: int) -> None:
    UPLOAD_BYTES.inc(size)
