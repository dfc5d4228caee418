"""The model catalogue: list, describe and delete models."""

from __future__ import annotations

from flask import Blueprint, current_app, request
from werkzeug.exceptions import MethodNotAllowed

from nexus.api import nexus, require_predict_token, require_token
from nexus.errors import BadInput
from nexus.http import json_response
from nexus.store import RESERVED_IDS

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
    _not_a_fixed_route(model_id)
    require_predict_token()
    return json_response(nexus().registry.get(model_id).details())


@bp.delete("/models/<model_id>")
def delete_model(model_id: str):
    _not_a_fixed_route(model_id)
    require_token()
    nexus().registry.delete(model_id)
    return json_response({"deleted": model_id})


def _not_a_fixed_route(model_id: str) -> None:
    """Answer 405 for /models/info and /models/upload: routes of their own, which take other methods."""
    if model_id in RESERVED_IDS:
        path = f"/models/{model_id}"
        allowed = {m for rule in current_app.url_map.iter_rules() if rule.rule == path for m in rule.methods}
        raise MethodNotAllowed(sorted(allowed))
