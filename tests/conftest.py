"""Shared fixtures: an app on a temporary model directory, its client, and upload helpers."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from nexus import create_app
from nexus.store import CHANGES_FILE, SERVING_SUFFIX, SERVING_WEIGHTS_SUFFIX
from tests import models

TOKEN = "s3cret-token"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    return directory


@pytest.fixture
def make_app(model_dir: Path):
    """Build an app on ``model_dir`` with the given settings on top of the defaults."""

    def build(**settings):
        return create_app({"model_dir": model_dir, "ort_threads": 1, **settings})

    return build


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def upload(client, model_bytes: bytes, model_id: str = "m", name: str = "Model", version: str = "v1", headers=None):
    """POST a model to /models/upload through the test client."""
    data = {"file": (io.BytesIO(model_bytes), f"{model_id}.onnx"), "id": model_id, "name": name, "version": version}
    return client.post("/models/upload", data=data, content_type="multipart/form-data", headers=headers or {})


@pytest.fixture
def upload_model(client):
    """Upload a model and assert it was accepted; returns the response JSON."""

    def do(model_bytes: bytes = None, model_id: str = "m", **kwargs):
        response = upload(client, model_bytes if model_bytes is not None else models.identity(), model_id, **kwargs)
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    return do


def files_in(directory: Path) -> list[str]:
    """Every file in the directory, hidden ones included, sorted; the store's change log aside
    (tests/test_store.py checks what it says)."""
    return sorted(p.name for p in directory.iterdir() if p.name != CHANGES_FILE)


def with_serving(names: list[str]) -> list[str]:
    """``names`` with the serving form the server derives for each model file among them, sorted like files_in."""
    derived = [f"{name.removesuffix('.onnx')}{suffix}" for name in names if name.endswith(".onnx")
               for suffix in (SERVING_SUFFIX, SERVING_WEIGHTS_SUFFIX)]
    return sorted([*names, *derived])


@pytest.fixture(scope="session")
def iris_bytes() -> bytes:
    """The skl2onnx iris classifier (label + ZipMap probabilities), built once per session."""
    return models.iris_classifier()


def strict_json(response):
    """Parse a response body as standard JSON: NaN and Infinity are refused, not read as floats."""

    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(response.get_data(as_text=True), parse_constant=refuse)


def assert_error(response, status: int, code: str, words: str) -> dict:
    """Assert the JSON error shape every refusal has: status, code, a message with ``words``, the request id."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = strict_json(response)
    assert set(body) == {"error", "code", "request_id"}, body
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and words in body["error"], body["error"]
    assert isinstance(body["request_id"], str) and body["request_id"] == response.headers["X-Request-ID"]
    return body


def metric(name: str, **labels) -> float:
    """The current value of one sample of this process's Prometheus registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def wait_for(check, seconds: float = 5.0, every: float = 0.02):
    """Call ``check`` until it returns something true or ``seconds`` pass; return its last answer."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(every)
