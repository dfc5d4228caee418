"""POST /models/upload: stream a model to the model directory, validate it, publish it."""

from __future__ import annotations

from flask import Blueprint, request

from nexus.api import nexus, require_token, text_field
from nexus.errors import BadInput, UnsupportedMediaType
from nexus.monitoring.reference import MAX_REFERENCE_BYTES
from nexus.http import json_response
from nexus.observability import metrics
from nexus.store import PendingFile, check_id, check_version, writing

bp = Blueprint("upload", __name__)


@bp.teardown_request
def _discard_pending(_exc: BaseException | None) -> None:
    """Remove the temporary files of this request's upload unless one was published."""
    for pending in request.environ.get("nexus.pending", ()):
        pending.discard()


@bp.before_request
def _guard() -> None:
    require_token()
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType(
            "upload the model as multipart/form-data with fields file, id, name and version (and optionally reference, task, task_output)"
            f"{f', not {request.mimetype!r}' if request.mimetype else ''}"
        )
    request.max_content_length = nexus().settings.max_upload_bytes
    request.max_form_parts = 16  # file, reference, id, name, version, task, task_output and slack: each file part is an open file


@bp.post("/models/upload")
def upload():
    pending = _pending_file()
    model_id = check_id(text_field(request.form, "id", 64))
    name = text_field(request.form, "name", 200)
    version = check_version(text_field(request.form, "version", 64))
    task = (_optional(request.form, "task"), _optional(request.form, "task_output"))
    model = nexus().registry.upload(model_id, name, version, pending, task, _reference())
    metrics.upload_accepted(model.size_bytes)
    body = {"model": model.summary(), "info": {"inputs": [t.info() for t in model.inputs], "outputs": [t.info() for t in model.outputs]}}
    return json_response(body, 201, headers={"Location": f"/models/{model_id}/versions/{version}"})


def _optional(form, name: str) -> str | None:
    return text_field(form, name, 200) if name in form else None


def _reference() -> tuple[str, bytes] | None:
    """The optional monitoring reference: sample inputs as CSV (with a header) or .npy, in field 'reference'."""
    storage = request.files.get("reference")
    if storage is None:
        if "reference" in request.form:
            raise BadInput("field 'reference' must be a file part (curl: -F reference=@samples.csv), not a text field")
        return None
    pending = next(p for p in request.environ.get("nexus.pending", ()) if p.file is storage.stream)
    size = pending.size()
    if size == 0:
        raise BadInput("field 'reference' is empty; send sample inputs as CSV with a header row, or as .npy")
    if size > MAX_REFERENCE_BYTES:
        raise BadInput(f"field 'reference' is {size} bytes; the limit is {MAX_REFERENCE_BYTES}")
    return storage.filename or "reference", pending.read_all()


def _pending_file() -> PendingFile:
    with writing():  # the multipart parser streams the file into the model directory here
        storage = request.files.get("file")
    if storage is None:
        raise BadInput("field 'file' is missing; send the .onnx model as the multipart file field 'file'")
    pending = next(p for p in request.environ.get("nexus.pending", ()) if p.file is storage.stream)
    if pending.size() == 0:
        raise BadInput("field 'file' is empty; send the .onnx model's bytes")
    return pending
