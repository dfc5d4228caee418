"""The WSGI layer around the Flask app: request id, CORS, metrics and the request's log line.

This is the seed server's middleware stack (metrics outermost, then request id, then CORS) done in
one pass over the WSGI environ. It runs for every request, errors included, so it is written for
speed: no Flask hooks, no context-local lookups, nothing at all for CORS when there is no Origin.
(flask-cors did the same work in about 20 us per request; the rules below are all we need.)

The hot routes (``POST /predict`` and V2 infer) are served here directly by their handlers,
which work on the environ: a Flask request context costs more than the model run of a small
model. Every other request goes through Flask.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from werkzeug.exceptions import HTTPException

from nexus.errors import ApiError
from nexus.http import (
    CALL_ENVIRON,
    REQUEST_ID_ENVIRON,
    ROUTE_ENVIRON,
    Reply,
    error_reply,
    serving,
    unexpected_reply,
)
from nexus.ids import new_request_id, valid_request_id
from nexus.observability import metrics

log = logging.getLogger("nexus.request")

ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = "Content-Type, Authorization, X-Request-ID, Inference-Header-Content-Length, X-Model-Version, X-Routing-Key"
EXPOSE_HEADERS = "X-Request-ID, Inference-Header-Content-Length, X-Model-Version"
PREFLIGHT_MAX_AGE = "600"


Handler = Callable[..., Reply]
_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


class Edge:
    """Wrap a Flask app's ``wsgi_app``: ``app.wsgi_app = Edge(app, origins, hot_routes)``.

    ``hot_routes`` maps Flask endpoints to ``handler(state, environ, **params)``; their POST rules
    are read from the app's url map, so each route is declared once, on its view.
    """

    def __init__(self, app, origins: tuple[str, ...], hot_routes: dict[str, Handler]) -> None:
        self.app = app
        self.state = app.extensions["nexus"]
        self.wsgi_app = app.wsgi_app
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)
        rules = [(r.rule, hot_routes[r.endpoint]) for r in app.url_map.iter_rules() if r.endpoint in hot_routes and "POST" in r.methods]
        self.exact = {t: (t, h) for t, h in rules if "<" not in t}
        self.patterns = [(_compile(t), t, h) for t, h in rules if "<" in t]

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        incoming = environ.get("HTTP_X_REQUEST_ID")
        environ[REQUEST_ID_ENVIRON] = incoming if incoming is not None and valid_request_id(incoming) else new_request_id()
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
        token = serving.set(environ)
        try:
            hot = self._hot_route(environ) if environ["REQUEST_METHOD"] == "POST" else None
            if hot is not None:
                body = self._serve_hot(environ, start, *hot)
            else:
                body = self.wsgi_app(environ, start)
        finally:
            serving.reset(token)
        endpoint = environ.get(ROUTE_ENVIRON) or metrics.UNMATCHED
        if endpoint != metrics.METRICS_PATH:
            self._observe(environ, status_holder[0][:3] if status_holder else "500", endpoint, started)
        return body

    def _hot_route(self, environ: dict[str, Any]) -> tuple[str, Handler, dict[str, str]] | None:
        path = environ.get("PATH_INFO", "")
        found = self.exact.get(path)
        if found is not None:
            return found[0], found[1], {}
        if not path.isascii():
            path = path.encode("latin-1").decode("utf-8", "replace")  # WSGI hands paths over as latin-1
        for pattern, template, handler in self.patterns:
            match = pattern.match(path)
            if match is not None:
                return template, handler, {k: v for k, v in match.groupdict().items() if v is not None}
        return None

    def _serve_hot(self, environ: dict[str, Any], start: Callable, template: str, handler: Handler, params: dict[str, str]) -> list[bytes]:
        environ[ROUTE_ENVIRON] = template
        try:
            reply = handler(self.state, environ, **params)
        except ApiError as exc:
            reply = error_reply(exc, environ[REQUEST_ID_ENVIRON])
        except Exception as exc:  # the same answer Flask's handler gives: logged, nothing leaked
            reply = unexpected_reply(exc, environ[REQUEST_ID_ENVIRON])
        headers = [("Content-Type", reply.content_type), ("Content-Length", str(len(reply.body))), *reply.headers]
        call = environ.get(CALL_ENVIRON)
        if call is not None and call.version is not None:  # which version answered (or failed on the input)
            version = call.version
            headers.append(("X-Model-Version", version if version.isascii() and version.isprintable() else quote(version)))
        start(_STATUS_LINES[reply.status], headers)
        return [reply.body]

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
        call = environ.get(CALL_ENVIRON)
        if call is not None and call.model_id is not None:  # a prediction on a registered model
            fields["model_id"] = call.model_id
            fields["model_version"] = call.version
            fields["latency_ms"] = call.latency_ms
            fields["outcome"] = outcome = "success" if status < "400" else "error"
            metrics.prediction_done(call.model_id, call.version, outcome, seconds)
        else:
            call = None
        log.log(logging.ERROR if status >= "500" else logging.INFO, "prediction" if call else "request", extra=fields)


def _compile(template: str) -> re.Pattern:
    """Turn a Flask route template into a regex with one named group per (default) converter."""
    return re.compile("^" + re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", template) + "$")


_NO_HEADERS: list[tuple[str, str]] = []
_VARY = [("Vary", "Origin")]
_ANY_ORIGIN = [("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", EXPOSE_HEADERS)]
_PREFLIGHT = [
    ("Access-Control-Allow-Methods", ALLOW_METHODS),
    ("Access-Control-Allow-Headers", ALLOW_HEADERS),
    ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE),
    ("Content-Length", "0"),
]
