"""Triton's model configuration and statistics extensions of the Open Inference Protocol, over REST.

- ``GET /v2/models/<name>[/versions/<version>]/config``: the configuration Triton's onnxruntime
  backend would fill in for the model (its "auto-complete"), as JSON.
- ``GET /v2/models/stats``, ``GET /v2/models/<name>[/versions/<version>]/stats``: each model's
  prediction counts and durations, summed over every gunicorn worker (``nexus.oip``).
"""

from __future__ import annotations

from flask import Blueprint

from nexus.api import nexus, require_predict_token
from nexus.http import json_response
from nexus.inference import resolve
from nexus.oip import config_of, statistics_of

bp = Blueprint("triton", __name__, url_prefix="/v2")


@bp.get("/models/<name>/config")
@bp.get("/models/<name>/versions/<version>/config")
def model_config(name: str, version: str | None = None):
    require_predict_token()
    return json_response(config_of(resolve(nexus().registry, name, version)))


@bp.get("/models/stats")
def all_model_stats():
    require_predict_token()
    return json_response({"model_stats": statistics_of(nexus().registry.models())})


@bp.get("/models/<name>/stats")
@bp.get("/models/<name>/versions/<version>/stats")
def model_stats(name: str, version: str | None = None):
    require_predict_token()
    return json_response({"model_stats": statistics_of(nexus().registry.versions_of(name, version))})
