"""The WSGI layer around the Flask app: request id, CORS, metrics and the request's log line.

This is the seed server's middleware stack (metrics outermost, then request id, then CORS) done in
one pass over the WSGI environ. It runs for every request, errors included, so it is written for
speed: no Flask hooks, no context-local lookups, nothing at all for CORS when there is no Origin.
(flask-cors did the same work in about 20 us per request; the rules below are all we need.)
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import HTTPException

from nexus import ROUTE_ENVIRON
from nexus.http import REQUEST_ID_ENVIRON, valid_request_id
from nexus.observability import metrics

log = logging.getLogger("nexus.request")

ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = "Content-Type, Authorization, X-Request-ID, Inference-Header-Content-Length"
EXPOSE_HEADERS = "X-Request-ID, Inference-Header-Content-Length"
PREFLIGHT_MAX_AGE = "600"


class Edge:
    """Wrap a Flask app's ``wsgi_app``: ``app.wsgi_app = Edge(app, origins)``."""

    def __init__(self, app, origins: tuple[str, ...]) -> None:
        self.app = app
        self.wsgi_app = app.wsgi_app
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        incoming = environ.get("HTTP_X_REQUEST_ID")
        environ[REQUEST_ID_ENVIRON] = incoming if incoming is not None and valid_request_id(incoming) else str(uuid.uuid4())
        cors = self._cors_headers(environ.get("HTTP_ORIGIN"))
        status_holder = []

        def start(status: str, headers: list[tuple[str, str]], exc_info=None):
            status_holder.append(status)
            headers.append(("X-Request-ID", environ[REQUEST_ID_ENVIRON]))
            headers.extend(cors)
            return start_response(status, headers, exc_info)

        if cors is not _NO_HEADERS and environ["REQUEST_METHOD"] == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ:
            endpoint = self._route(environ)
            if endpoint is not None:
                start("204 No Content", list(_PREFLIGHT))
                self._observe(environ, "204", endpoint, started)
                return []
        body = self.wsgi_app(environ, start)
        endpoint = environ.get(ROUTE_ENVIRON) or metrics.UNMATCHED
        if endpoint != metrics.METRICS_PATH:
            self._observe(environ, status_holder[0][:3] if status_holder else "500", endpoint, started)
        return body

    def _cors_headers(self, origin: str | None) -> list[tuple[str, str]]:
        if self.any_origin:
            return _NO_HEADERS if origin is None else _ANY_ORIGIN
        if origin is None or origin not in self.origins:
            return _VARY
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin"), ("Access-Control-Expose-Headers", EXPOSE_HEADERS)]

    def _route(self, environ: dict[str, Any]) -> str | None:
        try:
            rule, _ = self.app.url_map.bind_to_environ(environ).match(return_rule=True)
        except HTTPException:
            return None
        return rule.rule

    @staticmethod
    def _observe(environ: dict[str, Any], status: str, endpoint: str, started: float) -> None:
        seconds = time.perf_counter() - started
        method = environ["REQUEST_METHOD"]
        metrics.observe_request(method, endpoint, status, seconds)
        fields = {
            "request_id": environ[REQUEST_ID_ENVIRON],
            "method": method,
            "path": environ.get("PATH_INFO", ""),
            "status": int(status),
            "duration_ms": round(seconds * 1000, 3),
        }
        timer = environ.get("nexus.prediction")
        if timer is not None:
            fields["model_id"] = timer.model_id
            fields["latency_ms"] = timer.latency_ms
            fields["outcome"] = "success" if status < "400" else "error"
        log.log(logging.ERROR if status >= "500" else logging.INFO, "prediction" if timer else "request", extra=fields)


_NO_HEADERS: list[tuple[str, str]] = []
_VARY = [("Vary", "Origin")]
_ANY_ORIGIN = [("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", EXPOSE_HEADERS)]
_PREFLIGHT = [
    ("Access-Control-Allow-Methods", ALLOW_METHODS),
    ("Access-Control-Allow-Headers", ALLOW_HEADERS),
    ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE),
    ("Content-Length", "0"),
]
