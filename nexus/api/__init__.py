"""The HTTP API: one blueprint per resource, and the helpers they share."""

from __future__ import annotations

import hmac

from flask import Flask, current_app, request

from nexus.errors import BadInput, Unauthorized


def nexus():
    """Return the running app's settings, store and registry."""
    return current_app.extensions["nexus"]


def check_token(settings, environ: dict) -> None:
    """Raise Unauthorized unless the request carries the configured API token (if one is set)."""
    token = settings.api_token
    if token is None:
        return
    scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized()


def check_predict_token(settings, environ: dict) -> None:
    """Apply the token to reads and predictions too when NEXUS_PROTECT_PREDICT is on."""
    if settings.protect_predict:
        check_token(settings, environ)


def require_token() -> None:
    check_token(nexus().settings, request.environ)


def require_predict_token() -> None:
    check_predict_token(nexus().settings, request.environ)


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
    from nexus.api import console, docs, health, models, predict, triton, upload, v2

    for module in (console, docs, health, models, predict, upload, v2, triton):
        app.register_blueprint(module.bp)
