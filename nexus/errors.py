"""The error hierarchy: plain exceptions that carry their HTTP status and a stable code.

Nothing here knows about responses; the protocol layers render these (``nexus.http`` as JSON).
"""

from __future__ import annotations


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


class ModelUnavailable(ModelNotFound):
    """404: raise when a model's files are there but it cannot be served (damaged, or over a limit)."""

    code = "model_unavailable"

    def __init__(self, model_id: str, reason: str) -> None:
        ApiError.__init__(self, f"model '{model_id}' is in the model directory but cannot be served: {reason}")
        self.model_id = model_id


class MonitoringOff(ApiError):
    """404: raise when monitoring is asked of a server that runs without it (NEXUS_MONITORING=0)."""

    status = 404
    code = "monitoring_off"

    def __init__(self) -> None:
        super().__init__("monitoring is turned off on this server (NEXUS_MONITORING=0)")


class RecordsOff(ApiError):
    """404: raise when feedback or accuracy is asked of a server that records nothing (NEXUS_RECORDS=0)."""

    status = 404
    code = "records_off"

    def __init__(self) -> None:
        super().__init__("prediction records are turned off on this server (NEXUS_RECORDS=0), so there is no feedback or accuracy")


class ModelUnloaded(ModelNotFound):
    """404: raise when a model's files are kept but it was unloaded through the repository API."""

    code = "model_unloaded"

    def __init__(self, model_id: str, version: str | None = None) -> None:
        if version is None:
            message = f"model '{model_id}' is unloaded; POST /v2/repository/models/{model_id}/load serves it again"
        else:
            message = (f"version '{version}' of model '{model_id}' is unloaded; "
                       f"POST /v2/repository/models/{model_id}/versions/{version}/load serves it again")
        ApiError.__init__(self, message)
        self.model_id = model_id


class VersionNotFound(ModelNotFound):
    """404: raise when a model exists but not in the asked version."""

    code = "version_not_found"

    def __init__(self, model_id: str, version: str, versions: list[str]) -> None:
        known = ", ".join(f"'{v}'" for v in versions)
        ApiError.__init__(self, f"model '{model_id}' has no version '{version[:80]}'; its versions are {known}")
        self.model_id = model_id


class VersionExists(ApiError):
    """409: raise when an upload names a model and version that are already registered (versions never change)."""

    status = 409
    code = "version_exists"

    def __init__(self, model_id: str, version: str) -> None:
        super().__init__(f"model '{model_id}' already has version '{version}', and versions never change; upload it as a new version")


class VersionInUse(ApiError):
    """409: raise when a version to delete still gets traffic from its model's routing."""

    status = 409
    code = "version_in_use"


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


class OverLimit(ApiError):
    """422: raise when a valid model or request needs more than a configured limit allows."""

    status = 422
    code = "over_limit"


class ModelTooLarge(OverLimit):
    """422: raise when loading an uploaded model takes more memory than NEXUS_MAX_MODEL_MEMORY_MB."""

    code = "model_too_large"


class ModelLoadTimeout(OverLimit):
    """422: raise when loading an uploaded model takes longer than NEXUS_MAX_LOAD_SECONDS."""

    code = "model_load_timeout"


class InferenceMemoryLimit(OverLimit):
    """422: raise when a run needs more working memory than NEXUS_MAX_INFERENCE_MEMORY_MB."""

    code = "inference_memory_limit"

    def __init__(self, limit_mb: float) -> None:
        super().__init__(
            f"the model needed more working memory for this request than the limit of {limit_mb:g} MB "
            "(NEXUS_MAX_INFERENCE_MEMORY_MB); send a smaller request"
        )


class InferenceTimeout(ApiError):
    """504: raise when a run was stopped because it took longer than NEXUS_INFERENCE_TIMEOUT_S."""

    status = 504
    code = "inference_timeout"

    def __init__(self, limit_s: float) -> None:
        super().__init__(f"the model ran longer than the limit of {limit_s:g} s (NEXUS_INFERENCE_TIMEOUT_S) and was stopped")


class InferenceFailed(ApiError):
    """500: raise when onnxruntime fails while running a model on valid-looking input."""

    status = 500
    code = "inference_failed"


class NotReady(ApiError):
    """503: raise when this worker cannot serve models yet."""

    status = 503
    code = "not_ready"


class ModelLoading(NotReady):
    """503: raise when the asked model is still being loaded by this worker after the wait allowed."""

    code = "model_loading"

    def __init__(self, model_id: str, retry_after_s: int) -> None:
        super().__init__(f"model '{model_id}' is still loading in this worker; retry in {retry_after_s} s")
        self.headers = {"Retry-After": str(retry_after_s)}


class StorageUnavailable(NotReady):
    """503: raise when the model directory is missing or unreadable (an unmounted volume)."""

    code = "storage_unavailable"

    def __init__(self) -> None:
        super().__init__("the model directory is missing or unreadable; check the volume behind NEXUS_MODEL_DIR")


class RecordsUnavailable(NotReady):
    """503: raise when the records database cannot be reached (feedback cannot be stored or read now)."""

    code = "records_unavailable"

    def __init__(self, reason: str, retry_after_s: int = 5) -> None:
        super().__init__(f"the records database is unavailable: {reason}; retry in {retry_after_s} s")
        self.headers = {"Retry-After": str(retry_after_s)}
