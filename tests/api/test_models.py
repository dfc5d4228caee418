"""GET /models, GET /models/<id>, GET /models/info?id=, DELETE /models/<id>."""

from __future__ import annotations

import hashlib

import pytest

from tests import models
from tests.api.test_upload import assert_error
from tests.conftest import TOKEN, files_in, upload


def test_list_is_sorted_by_id_with_a_count(client, upload_model):
    for model_id in ("zeta", "alpha", "mid"):
        upload_model(models.identity(), model_id, name=model_id.title(), version="2")
    body = client.get("/models").get_json()
    assert body["count"] == 3
    assert body["models"] == [
        {"id": m, "name": m.title(), "version": "2", "path": f"models/{m}.onnx"} for m in ("alpha", "mid", "zeta")
    ]


def test_empty_list(client):
    assert client.get("/models").get_json() == {"models": [], "count": 0}


@pytest.mark.parametrize("url", ["/models/m", "/models/info?id=m"])
def test_details_by_path_and_by_query(client, upload_model, url):
    data = models.add_mul()
    upload_model(data, "m", name="Pair", version="v3")
    body = client.get(url).get_json()
    assert set(body) == {"id", "name", "version", "path", "inputs", "outputs", "created_at", "size_bytes", "sha256"}
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["size_bytes"] == len(data)
    assert [t["name"] for t in body["inputs"]] == ["A", "B"] and [t["name"] for t in body["outputs"]] == ["SUM", "PROD"]
    assert body["created_at"].endswith("Z")


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [("/models/ghost", 404, "model_not_found"), ("/models/info?id=ghost", 404, "model_not_found"),
     ("/models/info", 400, "bad_input"), ("/models/a%20b", 400, "bad_input"), ("/models/.hidden", 400, "bad_input")],
)
def test_details_errors(client, url, status, code):
    response = client.get(url)
    assert response.status_code == status and response.get_json()["code"] == code


def test_delete_removes_both_files_and_the_model(client, upload_model, model_dir):
    upload_model(models.identity(), "m")
    upload_model(models.identity(), "keep")
    response = client.delete("/models/m")
    assert response.status_code == 200 and response.get_json() == {"deleted": "m"}
    assert files_in(model_dir) == ["keep.model_info.json", "keep.onnx"]
    assert client.post("/predict", json={"model_id": "m", "features": [1, 2, 3, 4]}).status_code == 404
    assert [m["id"] for m in client.get("/models").get_json()["models"]] == ["keep"]


def test_delete_unknown_is_404(client, model_dir):
    assert_error(client.delete("/models/ghost"), 404, "model_not_found", "'ghost'")
    assert files_in(model_dir) == []


def test_delete_needs_the_token_when_set(make_app, model_dir):
    client = make_app(api_token=TOKEN).test_client()
    upload(client, models.identity(), "m", headers={"Authorization": f"Bearer {TOKEN}"})
    assert_error(client.delete("/models/m"), 401, "unauthorized", "Bearer")
    assert files_in(model_dir) == ["m.model_info.json", "m.onnx"]
    assert client.delete("/models/m", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert files_in(model_dir) == []


def test_reads_stay_open_with_a_token_unless_predict_is_protected(make_app):
    assert make_app(api_token=TOKEN).test_client().get("/models").status_code == 200
    protected = make_app(api_token=TOKEN, protect_predict=True).test_client()
    assert protected.get("/models").status_code == 401
    assert protected.get("/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert protected.get("/health").status_code == 200
