"""GET /health, /health/live and /health/ready."""

from __future__ import annotations

import re

from tests.conftest import TOKEN, assert_error, strict_json

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_health_is_ok_with_an_rfc3339_utc_timestamp(client):
    response = client.get("/health")
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = strict_json(response)
    assert set(body) == {"status", "timestamp"}
    assert body["status"] == "ok" and RFC3339_UTC.match(body["timestamp"])


def test_health_needs_no_token_even_when_everything_else_does(make_app):
    client = make_app(api_token=TOKEN, protect_predict=True).test_client()
    assert client.get("/health").status_code == 200 and client.get("/health/live").status_code == 200


def test_live_never_depends_on_the_models(client):
    assert client.get("/health/live").get_json()["status"] == "ok"


def test_ready_waits_for_the_first_load(app, client):
    assert_error(client.get("/health/ready"), 503, "not_ready", "not loaded")
    app.extensions["nexus"].registry.sync()
    body = client.get("/health/ready").get_json()
    assert body["status"] == "ready" and body["models"] == 0


def test_ready_counts_what_predictions_see_right_after_another_worker_writes(make_app):
    from tests import models
    from tests.conftest import upload

    writer, reader = make_app().test_client(), make_app()
    reader.extensions["nexus"].registry.sync()
    reader_client = reader.test_client()
    for model_id in ("a", "b"):
        assert upload(writer, models.identity(), model_id).status_code == 201
    assert reader_client.get("/health/ready").get_json()["models"] == 2
    assert writer.delete("/models/a").status_code == 200
    assert reader_client.get("/health/ready").get_json()["models"] == 1
