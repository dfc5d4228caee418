"""The model catalogue: list, describe and delete models."""

from __future__ import annotations

from flask import Blueprint, request

from nexus.api import nexus, require_predict_token, require_token
from nexus.errors import BadInput
from nexus.http import json_response

bp = Blueprint("models", __name__)


@bp.get("/models")
def list_models():
    require_predict_token()
    models = nexus().registry.models()
    return json_response({"models": [m.summary() for m in models], "count": len(models)})


@bp.get("/models/info")
def model_info_by_query():
    require_predict_token()
    model_id = request.args.get("id")
    if not model_id:
        raise BadInput("query parameter 'id' is missing, as in /models/info?id=iris")
    return json_response(nexus().registry.get(model_id).details())


@bp.get("/models/<model_id>")
def model_info(model_id: str):
    require_predict_token()
    return json_response(nexus().registry.get(model_id).details())


@bp.delete("/models/<model_id>")
def delete_model(model_id: str):
    require_token()
    nexus().registry.delete(model_id)
    return json_response({"deleted": model_id})
