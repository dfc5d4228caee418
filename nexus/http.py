"""HTTP plumbing shared by every route: request ids, JSON bodies in and out, timestamps.

Everything here works on the WSGI environ, so the two hot routes (``/predict`` and V2 infer),
which the middleware serves without a Flask request context, and the Flask views share it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson
from flask import Flask, Request, Response, current_app, request
from werkzeug.exceptions import HTTPException

from nexus.errors import ApiError, BadInput, TooLarge, UnsupportedMediaType
from nexus.ids import new_request_id, valid_request_id
from nexus.routing import pinned_and_key

log = logging.getLogger("nexus.errors")

REQUEST_ID_ENVIRON = "nexus.request_id"
ROUTE_ENVIRON = "nexus.route"
CALL_ENVIRON = "nexus.call"  # the inference.Call of a prediction, for the middleware's metrics and log line
# NaN and +-Infinity become null (orjson's rule); numpy arrays and int map keys are written natively.
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_READ_CHUNK = 1024 * 1024
# The environ of the request this thread is serving, set by the middleware for log lines and errors.
serving: ContextVar[dict[str, Any] | None] = ContextVar("nexus_serving", default=None)


class NexusRequest(Request):
    """A request that streams uploads into the model directory."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        pending = current_app.extensions["nexus"].store.new_pending()
        self.environ.setdefault("nexus.pending", []).append(pending)
        return pending.file


@dataclass(frozen=True)
class Reply:
    """A response as data: what a handler returns whether Flask or the middleware sends it."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = field(default=())


def request_id_of(environ: dict[str, Any]) -> str:
    """Return the request's id, making one from ``X-Request-ID`` or a new UUIDv7 the first time."""
    rid = environ.get(REQUEST_ID_ENVIRON)
    if rid is None:
        incoming = environ.get("HTTP_X_REQUEST_ID")
        rid = incoming if incoming is not None and valid_request_id(incoming) else new_request_id()
        environ[REQUEST_ID_ENVIRON] = rid
    return rid


VERSION_HEADER = "X-Model-Version"  # pins a version on a request; names the version that answered on a response
ROUTING_KEY_HEADER = "X-Routing-Key"  # requests with the same key get the same version under a given routing


def version_and_key(environ: dict[str, Any], version: object = None, key: object = None) -> tuple[str | None, str | None]:
    """Return the version a request pins and its routing key: from its body (``version``, ``key``) or its headers.

    A value in the body wins over the header; an empty header counts as none.
    """
    if version is None:
        version = environ.get("HTTP_X_MODEL_VERSION") or None
    if key is None:
        key = environ.get("HTTP_X_ROUTING_KEY") or None
    return pinned_and_key(version, key)


def current_request_id() -> str | None:
    """Return the id of the request being served, or None outside a request."""
    environ = serving.get()
    if environ is None:
        environ = request.environ if request else None
    return request_id_of(environ) if environ is not None else None


def dumps(body: Any) -> bytes:
    """Encode ``body`` as JSON: numpy arrays natively, NaN and Infinity as null."""
    return orjson.dumps(body, option=_DUMPS_OPTIONS)


def json_reply(body: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(dumps(body), status, "application/json", headers)


def to_response(reply: Reply) -> Response:
    """Turn a Reply into a Flask response."""
    response = Response(reply.body, status=reply.status, content_type=reply.content_type)
    for name, value in reply.headers:
        response.headers[name] = value
    return response


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """Build a JSON response without Flask's slower provider."""
    return to_response(json_reply(body, status, tuple((headers or {}).items())))


def mimetype_of(environ: dict[str, Any]) -> str:
    return environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()


def read_body(environ: dict[str, Any], limit: int) -> bytes:
    """Read the whole request body, or raise TooLarge once it passes ``limit`` bytes."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            size = int(length)
        except ValueError:
            raise BadInput("header Content-Length is not a number") from None
        if size > limit:
            raise TooLarge.over(limit)
        return stream.read(size) if size > 0 else b""
    if not environ.get("wsgi.input_terminated"):
        return b""  # no length and no end marker: reading could block forever
    chunks, total = [], 0
    while chunk := stream.read(_READ_CHUNK):
        total += len(chunk)
        if total > limit:
            raise TooLarge.over(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def read_json_body(environ: dict[str, Any], limit: int) -> dict[str, Any]:
    """Read and parse the body as one JSON object, or raise the 4xx that says what is wrong."""
    return parse_json_object(_json_bytes(environ, limit))


def read_json(environ: dict[str, Any], limit: int, expected: str) -> Any:
    """Read and parse the body as JSON of any shape (``expected`` names it in the error of an empty body)."""
    return parse_json(_json_bytes(environ, limit), expected)


def _json_bytes(environ: dict[str, Any], limit: int) -> bytes:
    mimetype = mimetype_of(environ)
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"send the body as JSON with 'Content-Type: application/json', not '{mimetype}'")
    return read_body(environ, limit)


def parse_json(data: bytes | memoryview, expected: str) -> Any:
    """Parse ``data`` as JSON, or raise BadInput saying what is wrong."""
    if not data:
        raise BadInput(f"request body is empty; send {expected}")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"request body is not valid JSON: {exc}") from None


def parse_json_object(data: bytes | memoryview) -> dict[str, Any]:
    """Parse ``data`` as one JSON object, or raise BadInput saying what is wrong."""
    body = parse_json(data, "a JSON object")
    if not isinstance(body, dict):
        raise BadInput(f"request body must be a JSON object, not {type(body).__name__}")
    return body


# -- errors: the one place that renders them ---------------------------------------------------

# Werkzeug's own errors keep their status; the code is derived from their name.
_WERKZEUG_MESSAGES = {
    404: "no such route; see GET /openapi.json for the API",
    405: "method not allowed on this route",
}


def error_reply(exc: ApiError, request_id: str) -> Reply:
    """Render an ApiError as the JSON Reply every error gets."""
    body = {"error": exc.message, "code": exc.code, "request_id": request_id}
    return json_reply(body, exc.status, tuple(exc.headers.items()))


def unexpected_reply(exc: BaseException, request_id: str) -> Reply:
    """Log an unexpected exception with its traceback and render a 500 that leaks nothing."""
    log.error("unhandled error", exc_info=exc, extra={"error_type": type(exc).__name__, "request_id": request_id})
    return error_reply(ApiError("internal server error; the request id is in the server log"), request_id)


def _from_werkzeug(exc: HTTPException) -> ApiError:
    status = exc.code or 500
    if status == 413:
        limit = request.max_content_length or 0
        if request.content_length is not None and request.content_length <= limit:
            # Werkzeug raises the same error when a form has too many parts or too large a field.
            return TooLarge(
                f"the multipart form has too many parts (at most {request.max_form_parts}) or a text field over "
                f"{round((request.max_form_memory_size or 0) / 1024)} KB; send only file, id, name and version"
            )
        return TooLarge.over(limit)
    error = ApiError(_WERKZEUG_MESSAGES.get(status) or (exc.description or exc.name or "error").strip())
    error.status = status
    error.code = "_".join(exc.name.lower().split()) if exc.name else "http_error"
    error.headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return error


def _render(exc: BaseException) -> Response:
    request_id = current_request_id()
    if isinstance(exc, ApiError):
        return to_response(error_reply(exc, request_id))
    if isinstance(exc, HTTPException):
        return to_response(error_reply(_from_werkzeug(exc), request_id))
    return to_response(unexpected_reply(exc, request_id))


def init_errors(app: Flask) -> None:
    """Render every error, Werkzeug's included, as a JSON body."""
    app.register_error_handler(Exception, _render)


def note_route() -> None:
    """Tell the middleware the route template Flask matched, for the metrics' endpoint label."""
    if request.url_rule is not None:
        request.environ[ROUTE_ENVIRON] = request.url_rule.rule
