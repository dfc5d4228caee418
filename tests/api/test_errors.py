"""nexus.errors: every error, the API's own and Werkzeug's, is one JSON shape, never HTML."""

from __future__ import annotations

import pytest

from nexus.errors import (
    ApiError,
    BadInput,
    InferenceFailed,
    InferenceMemoryLimit,
    InferenceTimeout,
    InvalidModel,
    ModelBusy,
    VersionExists,
    ModelLoadTimeout,
    ModelLoading,
    ModelNotFound,
    ModelTooLarge,
    ModelUnavailable,
    NotReady,
    StorageFull,
    StorageNotWritable,
    StorageUnavailable,
    TooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from tests import models
from tests.conftest import assert_error, files_in, upload


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ApiError("x"), 500, "internal_error"),
        (BadInput("x"), 400, "bad_input"),
        (InvalidModel("x"), 400, "invalid_model"),
        (Unauthorized(), 401, "unauthorized"),
        (ModelNotFound("iris"), 404, "model_not_found"),
        (VersionExists("iris", "v1"), 409, "version_exists"),
        (ModelBusy("iris"), 409, "model_busy"),
        (TooLarge("x"), 413, "too_large"),
        (UnsupportedMediaType("x"), 415, "unsupported_media_type"),
        (InferenceFailed("x"), 500, "inference_failed"),
        (StorageNotWritable(), 500, "storage_not_writable"),
        (NotReady("x"), 503, "not_ready"),
        (StorageFull(), 507, "storage_full"),
        (ModelUnavailable("iris", "too big"), 404, "model_unavailable"),
        (ModelTooLarge("x"), 422, "model_too_large"),
        (ModelLoadTimeout("x"), 422, "model_load_timeout"),
        (InferenceMemoryLimit(512), 422, "inference_memory_limit"),
        (ModelLoading("iris", 5), 503, "model_loading"),
        (StorageUnavailable(), 503, "storage_unavailable"),
        (InferenceTimeout(2.5), 504, "inference_timeout"),
    ],
)
def test_each_error_carries_its_status_and_code(error, status, code):
    assert (error.status, error.code) == (status, code)
    assert isinstance(error.message, str) and error.message


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ModelNotFound("iris"), "model 'iris' is not registered"),
        (VersionExists("iris", "v1"), "model 'iris' already has version 'v1', and versions never change; upload it as a new version"),
        (ModelBusy("iris"), "model 'iris' is being written by another request; try again"),
        (TooLarge.over(10 * 1024 * 1024), "request body is over the limit of 10 MB"),
        (TooLarge.over(int(0.01 * 1024 * 1024)), "request body is over the limit of 0.01 MB"),
        (InferenceTimeout(2.5), "the model ran longer than the limit of 2.5 s (NEXUS_INFERENCE_TIMEOUT_S) and was stopped"),
        (ModelLoading("iris", 5), "model 'iris' is still loading in this worker; retry in 5 s"),
        (ModelUnavailable("iris", "too big"), "model 'iris' is in the model directory but cannot be served: too big"),
    ],
)
def test_constructors_compose_the_message_from_the_facts(error, message):
    assert error.message == message


def test_unauthorized_asks_for_a_bearer_token():
    assert Unauthorized.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_loading_model_says_when_to_retry_and_other_errors_share_no_headers():
    assert ModelLoading("iris", 5).headers == {"Retry-After": "5"}
    assert NotReady("x").headers == {} and ModelLoading("a", 1).headers is not ModelLoading("b", 1).headers


ROUTING = [
    ("GET", "/nope", 404, "not_found", "no such route"),
    ("POST", "/nope", 404, "not_found", "no such route"),
    ("DELETE", "/nope/deeper", 404, "not_found", "no such route"),
    ("GET", "/models/upload/extra", 404, "not_found", "no such route"),
    ("GET", "/predict", 405, "method_not_allowed", "not allowed"),
    ("PUT", "/predict", 405, "method_not_allowed", "not allowed"),
    ("DELETE", "/predict", 405, "method_not_allowed", "not allowed"),
    ("PUT", "/models/upload", 405, "method_not_allowed", "not allowed"),
    ("POST", "/health", 405, "method_not_allowed", "not allowed"),
    ("POST", "/models", 405, "method_not_allowed", "not allowed"),
    ("PATCH", "/models/m", 405, "method_not_allowed", "not allowed"),
    ("POST", "/models/m", 405, "method_not_allowed", "not allowed"),
]


@pytest.mark.parametrize(("method", "url", "status", "code", "words"), ROUTING)
def test_routing_errors_are_json_never_html(client, model_dir, method, url, status, code, words):
    response = client.open(url, method=method)
    assert_error(response, status, code, words)
    assert b"<html" not in response.data.lower() and b"<!doctype" not in response.data.lower()
    assert files_in(model_dir) == []


@pytest.mark.parametrize(("method", "url", "allowed"), [("GET", "/predict", {"POST"}), ("PUT", "/models/upload", {"POST"}),
                                                        ("PATCH", "/models/m", {"GET", "DELETE"})])
def test_405_says_which_methods_are_allowed(client, method, url, allowed):
    response = client.open(url, method=method)
    assert response.status_code == 405
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


@pytest.mark.parametrize(("method", "url"), [("GET", "/nope"), ("GET", "/predict"), ("GET", "/models/ghost"), ("POST", "/predict")])
def test_an_error_keeps_the_callers_request_id(client, method, url):
    response = client.open(url, method=method, headers={"X-Request-ID": "trace-42"})
    assert response.status_code >= 400
    assert response.headers["X-Request-ID"] == "trace-42" == response.get_json()["request_id"]


def _explode(*args, **kwargs):
    raise RuntimeError("secret detail at /src/onnxruntime/core/session.cc:42\nTraceback (most recent call last)")


def test_an_unexpected_error_in_a_view_is_a_500_that_leaks_nothing(app, client, monkeypatch):
    monkeypatch.setattr(app.extensions["nexus"].registry, "catalogue", _explode)
    response = client.get("/models")
    body = assert_error(response, 500, "internal_error", "internal server error")
    assert "secret" not in body["error"] and "Traceback" not in body["error"] and ".cc:" not in body["error"]


def test_an_unexpected_error_in_predict_is_a_500_that_leaks_nothing(app, client, upload_model, model_dir, monkeypatch):
    upload_model(models.identity(), "m")
    before = files_in(model_dir)
    monkeypatch.setattr(app.extensions["nexus"].registry, "entry", _explode)
    response = client.post("/predict", json={"model_id": "m", "features": [1, 2, 3, 4]})
    body = assert_error(response, 500, "internal_error", "internal server error")
    assert "secret" not in body["error"] and "Traceback" not in response.get_data(as_text=True)
    assert files_in(model_dir) == before


def test_an_error_raised_in_an_upload_leaves_no_temporary_file(app, client, model_dir, monkeypatch):
    monkeypatch.setattr(app.extensions["nexus"].registry, "upload", _explode)
    assert_error(upload(client, models.identity(), "m"), 500, "internal_error", "internal server error")
    assert files_in(model_dir) == []

