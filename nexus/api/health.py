"""Health checks for load balancers and Kubernetes: cheap, no inference, no directory scan."""

from __future__ import annotations

from flask import Blueprint

from nexus import __version__
from nexus.api import nexus
from nexus.clock import utc_now
from nexus.http import json_response

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    """Answer the seed API's health check (kept for compatibility)."""
    return json_response({"status": "ok", "timestamp": utc_now()})


@bp.get("/health/live")
def live():
    """Say the process serves HTTP; never depends on models or disk."""
    return json_response({"status": "ok", "timestamp": utc_now()})


@bp.get("/health/ready")
def ready():
    """Say whether this worker has loaded the model directory and can still read it."""
    check_ready()
    registry = nexus().registry
    count = registry.count()  # in step with the directory like every prediction, and never waits: a probe
    body = {"status": "ready", "models": count, "version": __version__, "timestamp": utc_now()}
    if registry.recorder is not None:  # a database that is down costs records, not predictions: said here, not failed
        body["records"] = registry.recorder.status()
    return json_response(body)


def check_ready() -> None:
    """Raise NotReady unless this worker has loaded the model directory and can still read it."""
    nexus().registry.check_ready()
