"""HTTP plumbing shared by every blueprint: request ids, JSON bodies in and out, timestamps."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from flask import Response, request

from nexus.errors import BadInput, UnsupportedMediaType

REQUEST_ID_ENVIRON = "nexus.request_id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}").fullmatch
# NaN and +-Infinity become null (orjson's rule); numpy arrays and int map keys are written natively.
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def valid_request_id(value: object) -> bool:
    """Tell whether ``value`` may be used as a request id (1-128 chars of ``[A-Za-z0-9._:-]``)."""
    return isinstance(value, str) and _VALID_REQUEST_ID(value) is not None


def current_request_id() -> str | None:
    """Return the id of the request being served, or None outside a request."""
    if not request:
        return None
    environ = request.environ
    rid = environ.get(REQUEST_ID_ENVIRON)
    if rid is None:  # the app runs without its middleware (nexus.middleware.Edge sets the id)
        incoming = environ.get("HTTP_X_REQUEST_ID")
        rid = incoming if valid_request_id(incoming) else str(uuid.uuid4())
        environ[REQUEST_ID_ENVIRON] = rid
    return rid


def set_request_id(value: str) -> None:
    """Make ``value`` the id of the current request (a client may name it in the body)."""
    request.environ[REQUEST_ID_ENVIRON] = value


_second_text: tuple[int, str] = (0, "1970-01-01T00:00:00")


def rfc3339(timestamp: float) -> str:
    """Format a Unix time as RFC 3339 UTC with milliseconds and a ``Z`` (the second's text is cached)."""
    global _second_text
    second = int(timestamp)
    cached_second, text = _second_text
    if second != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_text = (second, text)
    return f"{text}.{int((timestamp - second) * 1000):03d}Z"


def utc_now() -> str:
    """Return the current time as RFC 3339 UTC with milliseconds and a ``Z``."""
    return rfc3339(time.time())


def dumps(body: Any) -> bytes:
    """Encode ``body`` as JSON: numpy arrays natively, NaN and Infinity as null."""
    return orjson.dumps(body, option=_DUMPS_OPTIONS)


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """Build a JSON response without Flask's slower provider."""
    response = Response(dumps(body), status=status, mimetype="application/json")
    if headers:
        response.headers.update(headers)
    return response


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or mimetype.endswith("+json")


def read_json_object() -> dict[str, Any]:
    """Parse the request body as one JSON object, or raise the 4xx that says what is wrong."""
    mimetype = request.mimetype
    if mimetype and not _is_json(mimetype):
        raise UnsupportedMediaType(f"send the body as JSON with 'Content-Type: application/json', not '{mimetype}'")
    return parse_json_object(request.get_data(cache=False))


def parse_json_object(data: bytes | memoryview) -> dict[str, Any]:
    """Parse ``data`` as one JSON object, or raise BadInput saying what is wrong."""
    if not data:
        raise BadInput("request body is empty; send a JSON object")
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadInput(f"request body must be a JSON object, not {type(body).__name__}")
    return body

