"""The model catalogue: list, describe and delete models and their versions; read and change a model's routing."""

from __future__ import annotations

from flask import Blueprint, current_app, request
from werkzeug.exceptions import MethodNotAllowed

from nexus.api import nexus, require_predict_token, require_token
from nexus.errors import BadInput, MonitoringOff
from nexus.http import json_response, parse_json_object
from nexus.registry import Entry, Model
from nexus.store import RESERVED_IDS

bp = Blueprint("models", __name__)


@bp.get("/models")
def list_models():
    require_predict_token()
    found = nexus().registry.catalogue()
    return json_response({"models": [{**summary, "versions": entry.versions} for entry, summary in found], "count": len(found)})


@bp.get("/models/info")
def model_info_by_query():
    require_predict_token()
    model_id = request.args.get("id")
    if not model_id:
        raise BadInput("query parameter 'id' is missing, as in /models/info?id=iris")
    return json_response(_details(model_id))


@bp.get("/models/<model_id>")
def model_info(model_id: str):
    _not_a_fixed_route(model_id)
    require_predict_token()
    return json_response(_details(model_id))


def _details(model_id: str) -> dict:
    """The default version's details, with the model's versions and routing."""
    registry = nexus().registry
    entry = registry.entry(model_id)
    return {**registry.version(entry, None).details(), "versions": entry.versions, "routing": entry.routing.document()}


@bp.get("/models/<model_id>/versions")
def list_versions(model_id: str):
    require_predict_token()
    registry = nexus().registry
    entry = registry.entry(model_id)
    return json_response({**_routing_view(entry), "versions": [_version_view(entry, v) for v in entry.versions]})


@bp.get("/models/<model_id>/monitoring")
def monitoring(model_id: str):
    """Confidence, class counts and input drift of each loaded version, merged over every worker of this server."""
    require_predict_token()
    registry = nexus().registry
    versions = registry.versions_of(model_id)  # an unknown model is a 404 model_not_found first
    if registry.monitoring is None:
        raise MonitoringOff()
    return json_response({"model_id": model_id, "thresholds": registry.monitoring.settings.thresholds(),
                          "versions": [_monitoring(m) for m in versions]})


@bp.get("/models/<model_id>/versions/<version>/monitoring")
def version_monitoring(model_id: str, version: str):
    require_predict_token()
    return json_response(_monitoring(nexus().registry.get(model_id, version)))


def _monitoring(model: Model) -> dict:
    if model.monitor is None:
        raise MonitoringOff()
    return {"model_id": model.id, "version": model.version, **model.monitor.report()}


@bp.get("/models/<model_id>/versions/<version>")
def version_info(model_id: str, version: str):
    require_predict_token()
    return json_response(_version_view(nexus().registry.entry(model_id), version, strict=True))


@bp.delete("/models/<model_id>/versions/<version>")
def delete_version(model_id: str, version: str):
    require_token()
    nexus().registry.delete_version(model_id, version)
    return json_response({"deleted": model_id, "version": version})


@bp.get("/models/<model_id>/routing")
def get_routing(model_id: str):
    require_predict_token()
    return json_response(_routing_view(nexus().registry.entry(model_id)))


@bp.put("/models/<model_id>/routing")
def put_routing(model_id: str):
    require_token()
    document = parse_json_object(request.get_data(cache=False))
    return json_response(_routing_view(nexus().registry.set_routing(model_id, document)))


def _routing_view(entry: Entry) -> dict:
    """The routing as stored, the version it makes the default, and each version's share of traffic."""
    plan = entry.plan
    return {
        "model_id": entry.id,
        "routing": entry.routing.document(),
        "default": plan.default,
        "traffic": plan.shares(),
        "shadow": plan.shadow_shares(),
        "versions": entry.versions,
    }


def _version_view(entry: Entry, version: str, strict: bool = False) -> dict:
    """One version: its details when this worker serves it, its state, and its share of traffic."""
    registry = nexus().registry
    # A version asked for by name must be served (or its error says why); in a listing, one this
    # worker cannot serve is shown with its state instead.
    model: Model | None = registry.version(entry, version) if strict else registry.loaded(entry, version)
    state, reason = registry.state(entry, version)
    return {
        **(model.details() if model is not None else {"id": entry.id, "version": version}),
        "state": state,
        **({"reason": reason} if reason else {}),
        "traffic_percent": entry.plan.shares().get(version, 0.0),
        "shadow_percent": entry.plan.shadow_shares().get(version, 0.0),
    }


@bp.delete("/models/<model_id>")
def delete_model(model_id: str):
    _not_a_fixed_route(model_id)
    require_token()
    nexus().registry.delete(model_id)
    return json_response({"deleted": model_id})  # with every version


def _not_a_fixed_route(model_id: str) -> None:
    """Answer 405 for /models/info and /models/upload: routes of their own, which take other methods."""
    if model_id in RESERVED_IDS:
        path = f"/models/{model_id}"
        allowed = {m for rule in current_app.url_map.iter_rules() if rule.rule == path for m in rule.methods}
        raise MethodNotAllowed(sorted(allowed))
