"""GET /: the web console (plain HTML, CSS and JavaScript from nexus/static, nothing from outside)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, send_from_directory

STATIC = Path(__file__).resolve().parent.parent / "static"
# The page may talk to this server only: no CDN, no web fonts, no third-party anything.
POLICY = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"

bp = Blueprint("console", __name__, static_folder=str(STATIC), static_url_path="/console")


@bp.get("/")
def index():
    return send_from_directory(STATIC, "index.html", max_age=0)


@bp.after_request
def _protect(response):
    """Every response of the console (the page at /, the static files under /console/, their 404s)
    carries the policy and nosniff: the page is also reachable as /console/index.html."""
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
