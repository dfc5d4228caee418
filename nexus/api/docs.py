"""GET /openapi.json: the API described for Postman, schemathesis and people."""

from __future__ import annotations

from functools import cache

from flask import Blueprint, Response

from nexus.http import dumps
from nexus.openapi import document

bp = Blueprint("docs", __name__)


@cache
def _document_bytes() -> bytes:
    return dumps(document())


@bp.get("/openapi.json")
def openapi():
    return Response(_document_bytes(), mimetype="application/json")
