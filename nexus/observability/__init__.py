"""What the server tells its operators: one JSON log line and a few metric updates per request."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, request

from nexus.http import current_request_id
from nexus.observability import metrics

log = logging.getLogger("nexus.request")


def _start() -> None:
    request.environ["nexus.started"] = time.perf_counter()


def _finish(response: Response) -> Response:
    environ = request.environ
    endpoint = metrics.endpoint_label()
    if endpoint == metrics.METRICS_PATH:
        return response
    seconds = time.perf_counter() - environ.get("nexus.started", time.perf_counter())
    status = response.status_code
    metrics.observe_request(request.method, endpoint, status, seconds)
    fields = {
        "request_id": current_request_id(),
        "method": request.method,
        "path": request.path,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
    }
    timer = environ.get("nexus.prediction")
    if timer is not None:
        fields["model_id"] = timer.model_id
        fields["latency_ms"] = timer.latency_ms
        fields["outcome"] = "success" if status < 400 else "error"
    log.log(logging.ERROR if status >= 500 else logging.INFO, "prediction" if timer else "request", extra=fields)
    return response


def init_app(app: Flask) -> None:
    """Time every request; after it, count it and write its one log line."""
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.after_request(_finish)
    metrics.init_app(app)
