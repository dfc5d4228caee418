"""POST /models/upload: stream a model to the model directory, validate it, publish it."""

from __future__ import annotations

from flask import Blueprint, request

from nexus.api import nexus, require_token, text_field
from nexus.errors import BadInput, UnsupportedMediaType
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
            "upload the model as multipart/form-data with fields file, id, name and version"
            f"{f', not {request.mimetype!r}' if request.mimetype else ''}"
        )
    request.max_content_length = nexus().settings.max_upload_bytes
    request.max_form_parts = 16  # file, id, name, version and a little slack: each file part is an open file


@bp.post("/models/upload")
def upload():
    pending = _pending_file()
    model_id = check_id(text_field(request.form, "id", 64))
    name = text_field(request.form, "name", 200)
    version = check_version(text_field(request.form, "version", 64))
    model = nexus().registry.upload(model_id, name, version, pending)
    metrics.upload_accepted(model.size_bytes)
    body = {"model": model.summary(), "info": {"inputs": [t.info() for t in model.inputs], "outputs": [t.info() for t in model.outputs]}}
    return json_response(body, 201, headers={"Location": f"/models/{model_id}/versions/{version}"})


def _pending_file() -> PendingFile:
    with writing():  # the multipart parser streams the file into the model directory here
        storage = request.files.get("file")
    if storage is None:
        raise BadInput("field 'file' is missing; send the .onnx model as the multipart file field 'file'")
    pending = next(p for p in request.environ.get("nexus.pending", ()) if p.file is storage.stream)
    if pending.size() == 0:
        raise BadInput("field 'file' is empty; send the .onnx model's bytes")
    return pending
