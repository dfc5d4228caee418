"""The error hierarchy of the API and the one handler that renders every error as JSON."""

from __future__ import annotations

import logging

from flask import Flask
from werkzeug.exceptions import HTTPException

log = logging.getLogger("nexus.errors")


class ApiError(Exception):
    """Base of every error the API answers with; subclasses only set ``status`` and ``code``."""

    status = 500
    code = "internal_error"
    headers: dict[str, str] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(ApiError):
    """400: raise when the request is malformed or its values do not fit the model."""

    status = 400
    code = "bad_input"


class InvalidModel(BadInput):
    """400: raise when an uploaded file is not a model this server can load."""

    code = "invalid_model"


class Unauthorized(ApiError):
    """401: raise when a route needs the API token and the request lacks the right one."""

    status = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="model-nexus"'}

    def __init__(self, message: str = "this route needs 'Authorization: Bearer <token>' with the server's API token") -> None:
        super().__init__(message)


class ModelNotFound(ApiError):
    """404: raise when no model with the asked id is registered."""

    status = 404
    code = "model_not_found"

    def __init__(self, model_id: str) -> None:
        super().__init__(f"model '{model_id}' is not registered")
        self.model_id = model_id


class ModelUnloaded(ModelNotFound):
    """404: raise when a model's files are kept but it was unloaded through the repository API."""

    code = "model_unloaded"

    def __init__(self, model_id: str) -> None:
        ApiError.__init__(self, f"model '{model_id}' is unloaded; POST /v2/repository/models/{model_id}/load serves it again")
        self.model_id = model_id


class VersionNotFound(ModelNotFound):
    """404: raise when a model exists but not in the asked version."""

    code = "version_not_found"

    def __init__(self, model_id: str, version: str, served: str) -> None:
        ApiError.__init__(self, f"model '{model_id}' has no version '{version}'; it serves version '{served}'")
        self.model_id = model_id


class ModelExists(ApiError):
    """409: raise when an upload names an id that is already registered."""

    status = 409
    code = "model_exists"

    def __init__(self, model_id: str) -> None:
        super().__init__(f"model '{model_id}' is already registered; delete it first or choose another id")


class ModelBusy(ApiError):
    """409: raise when another request is writing the same model id right now."""

    status = 409
    code = "model_busy"

    def __init__(self, model_id: str) -> None:
        super().__init__(f"model '{model_id}' is being written by another request; try again")


class TooLarge(ApiError):
    """413: raise when a body is over its configured limit."""

    status = 413
    code = "too_large"

    @classmethod
    def over(cls, limit: int) -> TooLarge:
        return cls(f"request body is over the limit of {round(limit / (1024 * 1024), 4):g} MB")


class UnsupportedMediaType(ApiError):
    """415: raise when the body is not in the content type the route reads."""

    status = 415
    code = "unsupported_media_type"


class StorageFull(ApiError):
    """507: raise when the model directory has no space (or quota) left for a write."""

    status = 507
    code = "storage_full"

    def __init__(self) -> None:
        super().__init__("the model directory is full; free space on its volume or raise its quota, then upload again")


class StorageNotWritable(ApiError):
    """500: raise when the model directory refuses writes (read-only volume, wrong owner)."""

    status = 500
    code = "storage_not_writable"

    def __init__(self) -> None:
        super().__init__("the model directory is not writable by the server; check the volume's mount and permissions")


class InferenceFailed(ApiError):
    """500: raise when onnxruntime fails while running a model on valid-looking input."""

    status = 500
    code = "inference_failed"


class NotReady(ApiError):
    """503: raise when this worker cannot serve models yet."""

    status = 503
    code = "not_ready"


# Werkzeug's own errors keep their status; the code is derived from their name.
_WERKZEUG_MESSAGES = {
    404: "no such route; see GET /openapi.json for the API",
    405: "method not allowed on this route",
}


def error_reply(exc: ApiError, request_id: str):
    """Render an ApiError as the JSON Reply every error gets."""
    from nexus.http import json_reply

    body = {"error": exc.message, "code": exc.code, "request_id": request_id}
    return json_reply(body, exc.status, tuple(exc.headers.items()))


def unexpected_reply(exc: BaseException, request_id: str):
    """Log an unexpected exception with its traceback and render a 500 that leaks nothing."""
    log.error("unhandled error", exc_info=exc, extra={"error_type": type(exc).__name__, "request_id": request_id})
    return error_reply(ApiError("internal server error; the request id is in the server log"), request_id)


def _from_werkzeug(exc: HTTPException) -> ApiError:
    status = exc.code or 500
    if status == 413:
        from flask import request

        return TooLarge.over(request.max_content_length or 0)
    error = ApiError(_WERKZEUG_MESSAGES.get(status) or (exc.description or exc.name or "error").strip())
    error.status = status
    error.code = "_".join(exc.name.lower().split()) if exc.name else "http_error"
    error.headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return error


def _render(exc: BaseException):
    from nexus.http import current_request_id, to_response

    request_id = current_request_id()
    if isinstance(exc, ApiError):
        return to_response(error_reply(exc, request_id))
    if isinstance(exc, HTTPException):
        return to_response(error_reply(_from_werkzeug(exc), request_id))
    return to_response(unexpected_reply(exc, request_id))


def init_app(app: Flask) -> None:
    """Render every error, Werkzeug's included, as a JSON body."""
    app.register_error_handler(Exception, _render)
