"""The HTTP API: one blueprint per resource, and the helpers they share."""

from __future__ import annotations

from flask import Flask, current_app, request

from nexus import auth
from nexus.errors import BadInput


def nexus():
    """Return the running app's settings, store and registry."""
    return current_app.extensions["nexus"]


def check_predict_token(settings, environ: dict) -> None:
    """Apply the token to a hot route's request when NEXUS_PROTECT_PREDICT is on."""
    auth.check_predict_token(settings, environ.get("HTTP_AUTHORIZATION"))


def require_token() -> None:
    auth.check_token(nexus().settings, request.headers.get("Authorization"))


def require_predict_token() -> None:
    auth.check_predict_token(nexus().settings, request.headers.get("Authorization"))


def text_field(source, name: str, max_length: int) -> str:
    """Return a required, non-empty text field of at most ``max_length`` characters."""
    value = source.get(name)
    if value is None:
        raise BadInput(f"field '{name}' is missing")
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"field '{name}' must be a non-empty string")
    if len(value) > max_length:
        raise BadInput(f"field '{name}' is {len(value)} characters long; the limit is {max_length}")
    return value


def register_blueprints(app: Flask) -> None:
    from nexus.api import console, docs, feedback, health, models, predict, triton, upload, v2

    for module in (console, docs, feedback, health, models, predict, upload, v2, triton):
        app.register_blueprint(module.bp)
