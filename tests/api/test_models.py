"""GET /models, GET /models/<id>, GET /models/info?id=, DELETE /models/<id>."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests import models
from tests.conftest import TOKEN, assert_error, files_in, with_serving, strict_json, upload


def test_list_is_sorted_by_id_with_a_count(client, upload_model):
    for model_id in ("zeta", "alpha", "mid"):
        upload_model(models.identity(), model_id, name=model_id.title(), version="2")
    body = client.get("/models").get_json()
    assert body["count"] == 3
    assert body["models"] == [
        {"id": m, "name": m.title(), "version": "2", "path": f"models/{m}@2.onnx", "versions": ["2"]} for m in ("alpha", "mid", "zeta")
    ]


def test_empty_list(client):
    assert client.get("/models").get_json() == {"models": [], "count": 0}


@pytest.mark.parametrize("url", ["/models/m", "/models/info?id=m"])
def test_details_by_path_and_by_query(client, upload_model, url):
    data = models.add_mul()
    upload_model(data, "m", name="Pair", version="v3")
    body = client.get(url).get_json()
    assert set(body) == {"id", "name", "version", "path", "inputs", "outputs", "created_at", "size_bytes", "sha256", "task",
                         "versions", "routing"}
    assert body["versions"] == ["v3"] and body["routing"] == {"default": None, "canary": {}, "shadow": {}}
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["size_bytes"] == len(data)
    assert [t["name"] for t in body["inputs"]] == ["A", "B"] and [t["name"] for t in body["outputs"]] == ["SUM", "PROD"]
    assert body["created_at"].endswith("Z")


@pytest.mark.parametrize(
    ("url", "status", "code", "words"),
    [
        ("/models/ghost", 404, "model_not_found", "model 'ghost' is not registered"),
        ("/models/info?id=ghost", 404, "model_not_found", "model 'ghost' is not registered"),
        ("/models/info", 400, "bad_input", "query parameter 'id' is missing"),
        ("/models/info?id=", 400, "bad_input", "query parameter 'id' is missing"),
        ("/models/info?id=a%20b", 400, "bad_input", "invalid model id 'a b'"),
        ("/models/info?id=..%2Fx", 400, "bad_input", "invalid model id '../x'"),
        ("/models/a%20b", 400, "bad_input", "invalid model id 'a b'"),
        ("/models/.hidden", 400, "bad_input", "invalid model id '.hidden'"),
        ("/models/%C3%BCni", 400, "bad_input", "invalid model id"),
        ("/models/..%2Fx", 404, "not_found", "no such route"),
    ],
)
def test_details_errors(client, upload_model, model_dir, url, status, code, words):
    upload_model(models.identity(), "m")
    before = files_in(model_dir)
    assert_error(client.get(url), status, code, words)
    assert files_in(model_dir) == before


def test_delete_removes_both_files_and_the_model(client, upload_model, model_dir):
    upload_model(models.identity(), "m")
    upload_model(models.identity(), "keep")
    response = client.delete("/models/m")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert strict_json(response) == {"deleted": "m"}
    assert files_in(model_dir) == with_serving(["keep.routing.json", "keep@v1.model_info.json", "keep@v1.onnx"])
    gone = client.post("/predict", json={"model_id": "m", "features": [1, 2, 3, 4]})
    assert_error(gone, 404, "model_not_found", "model 'm' is not registered")
    assert_error(client.get("/models/m"), 404, "model_not_found", "model 'm' is not registered")
    assert [m["id"] for m in client.get("/models").get_json()["models"]] == ["keep"]


@pytest.mark.parametrize(
    ("url", "status", "code", "words"),
    [("/models/ghost", 404, "model_not_found", "model 'ghost' is not registered"),
     ("/models/a%20b", 400, "bad_input", "invalid model id 'a b'"),
     ("/models/..%2Fm.onnx", 404, "not_found", "no such route")],
)
def test_delete_of_an_unknown_or_invalid_id_is_refused(client, upload_model, model_dir, url, status, code, words):
    upload_model(models.identity(), "m")
    before = files_in(model_dir)
    assert_error(client.delete(url), status, code, words)
    assert files_in(model_dir) == before


def test_delete_twice_is_404_the_second_time(client, upload_model, model_dir):
    upload_model(models.identity(), "m")
    assert client.delete("/models/m").status_code == 200
    assert_error(client.delete("/models/m"), 404, "model_not_found", "model 'm' is not registered")
    assert files_in(model_dir) == with_serving([])


def test_delete_needs_the_token_when_set(make_app, model_dir):
    client = make_app(api_token=TOKEN).test_client()
    upload(client, models.identity(), "m", headers={"Authorization": f"Bearer {TOKEN}"})
    refused = client.delete("/models/m")
    assert_error(refused, 401, "unauthorized", "Bearer")
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(client.delete("/models/m", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized", "Bearer")
    assert files_in(model_dir) == with_serving(["m.routing.json", "m@v1.model_info.json", "m@v1.onnx"])
    assert client.post("/predict", json={"model_id": "m", "features": [1, 2, 3, 4]}).status_code == 200
    assert client.delete("/models/m", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert files_in(model_dir) == with_serving([])


def test_reads_stay_open_with_a_token_unless_predict_is_protected(make_app):
    assert make_app(api_token=TOKEN).test_client().get("/models").status_code == 200
    protected = make_app(api_token=TOKEN, protect_predict=True).test_client()
    assert protected.get("/models").status_code == 401
    assert protected.get("/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert protected.get("/health").status_code == 200


@pytest.mark.parametrize(("method", "url", "allowed"), [
    ("GET", "/models/upload", "OPTIONS, POST"),
    ("DELETE", "/models/upload", "OPTIONS, POST"),
    ("DELETE", "/models/info", "GET, HEAD, OPTIONS"),
])
def test_the_fixed_routes_under_models_are_not_model_ids(client, upload_model, model_dir, method, url,
                                                          allowed):
    """/models/upload and /models/info are routes of their own: their other methods are 405s, not models."""
    upload_model(models.identity(), "m")
    before = files_in(model_dir)
    response = client.open(url, method=method)
    assert_error(response, 405, "method_not_allowed", "method not allowed")
    assert response.headers["Allow"] == allowed
    assert files_in(model_dir) == before


DEMO = Path(__file__).resolve().parents[2] / "models"


def test_models_stored_under_now_reserved_ids_are_served_where_they_can_be_named(make_app, model_dir):
    """Files an older release accepted under 'info' and 'upload' break nothing: they are listed, read through
    /models/info?id=, predicted with and served over V2; the fixed routes stay what they are."""
    for model_id in ("info", "upload", "iris"):
        shutil.copy(DEMO / "iris.onnx", model_dir / f"{model_id}.onnx")
        sidecar = json.loads((DEMO / "iris.model_info.json").read_text())
        (model_dir / f"{model_id}.model_info.json").write_text(json.dumps({**sidecar, "id": model_id}))
    before = files_in(model_dir)
    app = make_app()
    app.extensions["nexus"].registry.sync()
    client = app.test_client()
    assert client.get("/health/ready").status_code == 200
    assert [m["id"] for m in client.get("/models").get_json()["models"]] == ["info", "iris", "upload"]
    for model_id in ("info", "upload"):
        assert client.get(f"/models/info?id={model_id}").get_json()["id"] == model_id
        predicted = client.post("/predict", json={"model_id": model_id, "features": [5.1, 3.5, 1.4, 0.2]})
        assert predicted.status_code == 200 and predicted.get_json()["prediction"] == [0]
        assert client.get(f"/v2/models/{model_id}").get_json()["name"] == model_id
    assert_error(client.get("/models/info"), 400, "bad_input", "query parameter 'id' is missing")
    assert_error(client.delete("/models/info"), 405, "method_not_allowed", "method not allowed")
    assert_error(upload(client, models.identity(), "info"), 400, "bad_input", "id 'info' is reserved")
    assert client.get("/models/iris").get_json()["id"] == "iris"
    assert files_in(model_dir) == with_serving(before)  # each derived its serving form
