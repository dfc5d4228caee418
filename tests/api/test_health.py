"""Health routes and Werkzeug's own errors, always JSON."""

from __future__ import annotations

import re

import pytest

from tests.api.test_upload import assert_error


def test_health_is_the_seed_shape(client):
    body = client.get("/health").get_json()
    assert body["status"] == "ok" and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", body["timestamp"])


def test_live_never_depends_on_the_models(client):
    assert client.get("/health/live").get_json()["status"] == "ok"


def test_ready_waits_for_the_first_load(app, client):
    assert_error(client.get("/health/ready"), 503, "not_ready", "not loaded")
    app.extensions["nexus"].registry.sync()
    body = client.get("/health/ready").get_json()
    assert body["status"] == "ready" and body["models"] == 0


@pytest.mark.parametrize(("method", "url", "status", "code"), [
    ("GET", "/nope", 404, "not_found"),
    ("GET", "/models/upload/extra", 404, "not_found"),
    ("PUT", "/models/upload", 405, "method_not_allowed"),
    ("POST", "/health", 405, "method_not_allowed"),
    ("PATCH", "/models/m", 405, "method_not_allowed"),
])
def test_routing_errors_are_json(client, method, url, status, code):
    response = client.open(url, method=method)
    assert response.status_code == status and response.mimetype == "application/json"
    assert response.get_json()["code"] == code
    assert b"<html" not in response.data.lower()
