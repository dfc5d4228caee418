"""Health checks for load balancers and Kubernetes."""

from __future__ import annotations

from flask import Blueprint

from nexus.http import json_response, utc_now

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    return json_response({"status": "ok", "timestamp": utc_now()})
