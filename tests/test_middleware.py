"""Request ids, CORS, per-request metrics and log lines (nexus.middleware.Edge)."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from prometheus_client import REGISTRY

from tests import models
from tests.conftest import metric as sample


@pytest.mark.parametrize("path", ["/health", "/models", "/nope", "/models/ghost"])
def test_every_response_carries_a_uuid7_request_id(client, path):
    response = client.get(path)
    assert uuid.UUID(response.headers["X-Request-ID"]).version == 7
    if response.status_code >= 400:
        assert response.get_json()["request_id"] == response.headers["X-Request-ID"]


@pytest.mark.parametrize("given", ["abc-123", "nginx:req.42_X", "a" * 128])
def test_a_valid_incoming_request_id_is_kept(client, given):
    response = client.get("/nope", headers={"X-Request-ID": given})
    assert response.headers["X-Request-ID"] == given
    assert response.get_json()["request_id"] == given


@pytest.mark.parametrize("given", ["", "a" * 129, "has space", "semi;colon", "ünï"])
def test_an_invalid_incoming_request_id_is_replaced(client, given):
    response = client.get("/health", headers={"X-Request-ID": given})
    assert response.headers["X-Request-ID"] != given
    assert uuid.UUID(response.headers["X-Request-ID"]).version == 7


def test_no_cors_headers_without_an_origin(client):
    response = client.get("/health")
    assert not any(h.startswith("Access-Control") for h in response.headers.keys())


def test_any_origin_gets_star_and_the_exposed_request_id(client):
    response = client.get("/health", headers={"Origin": "https://app.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize("path", ["/predict", "/models/upload", "/models/iris", "/v2/models/iris/infer"])
def test_preflight_answers_204_with_methods_and_headers(client, path):
    response = client.options(path, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                                             "Access-Control-Request-Headers": "content-type, authorization"})
    assert response.status_code == 204
    assert response.data == b""
    assert set(response.headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "POST", "DELETE", "OPTIONS"}
    allowed = response.headers["Access-Control-Allow-Headers"].split(", ")
    assert {"Content-Type", "Authorization", "X-Request-ID", "Inference-Header-Content-Length"} <= set(allowed)
    assert response.headers["X-Request-ID"]
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_preflight_on_an_unknown_route_is_a_json_404(client):
    response = client.options("/nope", headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"})
    assert response.status_code == 404 and response.get_json()["code"] == "not_found"


def test_listed_origins_are_echoed_and_others_are_not(make_app):
    client = make_app(cors_origins=("https://a.example", "https://b.example")).test_client()
    allowed = client.get("/health", headers={"Origin": "https://b.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://b.example"
    assert "Origin" in allowed.headers["Vary"]
    refused = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert "Origin" in refused.headers["Vary"]


def test_requests_are_counted_by_route_template(client, upload_model):
    upload_model(models.identity(), "m")
    before = sample("http_requests_total", method="GET", endpoint="/models/<model_id>", status="200")
    seconds_before = sample("http_request_duration_seconds_count", method="GET", endpoint="/models/<model_id>")
    for _ in range(3):
        assert client.get("/models/m").status_code == 200
    assert sample("http_requests_total", method="GET", endpoint="/models/<model_id>", status="200") == before + 3
    assert sample("http_request_duration_seconds_count", method="GET", endpoint="/models/<model_id>") == seconds_before + 3


def test_unknown_paths_share_one_series(client):
    before = sample("http_requests_total", method="GET", endpoint="<unmatched>", status="404")
    for i in range(50):
        client.get(f"/random/{uuid.uuid4()}/{i}")
    assert sample("http_requests_total", method="GET", endpoint="<unmatched>", status="404") == before + 50
    endpoints = {s.labels["endpoint"] for m in REGISTRY.collect() if m.name == "http_requests" for s in m.samples}
    assert not any("random" in e for e in endpoints)


def test_metrics_endpoint_is_not_counted(client):
    before = sample("http_requests_total", method="GET", endpoint="/metrics", status="200")
    response = client.get("/metrics")
    assert response.status_code == 200 and b"http_requests_total" in response.data
    assert sample("http_requests_total", method="GET", endpoint="/metrics", status="200") == before == 0


def test_predictions_are_counted_by_model_and_outcome(client, upload_model):
    upload_model(models.identity(), "counted")
    ok = sample("model_predictions_total", model_id="counted", version="v1", status="success")
    bad = sample("model_predictions_total", model_id="counted", version="v1", status="error")
    runs = sample("model_inference_duration_seconds_count", model_id="counted", version="v1")
    client.post("/predict", json={"model_id": "counted", "features": [1, 2, 3, 4]})
    client.post("/predict", json={"model_id": "counted", "features": [1, 2, 3]})
    client.post("/predict", json={"model_id": "ghost", "features": [1, 2, 3]})
    assert sample("model_predictions_total", model_id="counted", version="v1", status="success") == ok + 1
    assert sample("model_predictions_total", model_id="counted", version="v1", status="error") == bad + 1
    assert sample("model_inference_duration_seconds_count", model_id="counted", version="v1") == runs + 1
    assert sample("model_predictions_total", model_id="ghost", status="error") == 0  # no label for unknown ids


def test_one_log_line_per_request_with_its_fields(client, upload_model, caplog):
    upload_model(models.identity(), "m")
    with caplog.at_level(logging.INFO, logger="nexus.request"):
        client.post("/predict", json={"model_id": "m", "features": [1, 2, 3, 4]}, headers={"X-Request-ID": "trace-1"})
        client.get("/health", headers={"X-Request-ID": "trace-2"})
    lines = [r for r in caplog.records if r.name == "nexus.request"]
    assert [r.getMessage() for r in lines] == ["prediction", "request"]
    prediction, request = lines
    assert (prediction.request_id, prediction.method, prediction.path, prediction.status) == ("trace-1", "POST", "/predict", 200)
    assert prediction.model_id == "m" and prediction.outcome == "success" and prediction.latency_ms >= 0
    assert request.request_id == "trace-2" and request.status == 200 and request.duration_ms >= 0


def test_json_formatter_writes_one_object_per_line_with_the_request_id(app, client, upload_model, caplog):
    from nexus.observability.logs import JsonFormatter, RequestIdFilter

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(handler.format(record))
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.INFO)
    try:
        client.post("/models/upload", data={}, content_type="multipart/form-data", headers={"X-Request-ID": "up-1"})
        upload_model(models.identity(), "logged", headers={"X-Request-ID": "up-2"})
    finally:
        root.removeHandler(handler)
    parsed = [json.loads(line) for line in records]
    assert all({"time", "level", "message", "logger"} <= set(p) for p in parsed)
    assert all(p["time"].endswith("Z") for p in parsed)
    uploaded = [p for p in parsed if p["message"] == "model uploaded"]
    assert uploaded and uploaded[0]["request_id"] == "up-2" and uploaded[0]["model_id"] == "logged"


def test_the_hot_routes_come_from_the_url_map(app):
    edge = app.wsgi_app
    assert set(edge.exact) == {"/predict"}
    assert sorted(template for _, template, _ in edge.patterns) == [
        "/v2/models/<name>/infer", "/v2/models/<name>/versions/<version>/infer"]


def test_a_deleted_model_leaves_no_series_in_metrics(client, upload_model):
    upload_model(models.identity(), "gone")
    assert client.post("/predict", json={"model_id": "gone", "features": [1, 2, 3, 4]}).status_code == 200
    assert b'model_id="gone"' in client.get("/metrics").data
    assert client.delete("/models/gone").status_code == 200
    text = client.get("/metrics").data
    assert b'model_id="gone"' not in text and b"http_requests_total" in text


def test_generated_request_ids_are_distinct_uuid7_text():
    from nexus.ids import new_request_id

    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in list(ids)[:200]:
        parsed = uuid.UUID(text)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


def test_a_generated_request_id_tells_its_time_and_other_ids_do_not():
    import time

    from nexus.ids import new_request_id, request_id_time

    before = time.time()
    made = request_id_time(new_request_id())
    assert made is not None and before - 0.002 <= made <= time.time() + 0.002
    for other in (str(uuid.uuid4()), "client-id-1", "01a22f8d-8be5-4b6b-ad6d-6629f5cd9adb", "x" * 36, ""):
        assert request_id_time(other) is None
    made = []
    for _ in range(3):
        made.append(new_request_id())
        time.sleep(0.002)
    assert sorted(made) == made  # time-ordered as text
