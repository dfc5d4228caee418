"""deploy/nginx.conf in front of the real gunicorn: large uploads, predictions, one request id end to end."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import requests

from tests import models
from tests.live.nginx import MISSING, NGINX, running_nginx

pytestmark = pytest.mark.skipif(NGINX is None, reason=MISSING)


@pytest.fixture
def nginx(live, tmp_path):
    with running_nginx(tmp_path, live.port) as started:
        yield started


def test_large_upload_predict_and_one_request_id_through_nginx(live, nginx):
    url, access_log = nginx
    model, weights, bias = models.linear(in_features=2500, out_features=2000, seed=3)  # 20 MB of weights
    assert len(model) > 20_000_000
    response = requests.post(f"{url}/models/upload", files={"file": ("big.onnx", model)},
                             data={"id": "big", "name": "Big", "version": "1"}, timeout=120)
    assert response.status_code == 201, response.text
    assert response.json()["model"]["id"] == "big"

    features = np.linspace(-1, 1, 2500, dtype=np.float32)
    predicted = requests.post(f"{url}/predict", json={"model_id": "big", "features": features.tolist()}, timeout=30)
    assert predicted.status_code == 200
    assert np.allclose(predicted.json()["prediction"], features @ weights + bias, rtol=1e-4, atol=1e-3)

    request_id = predicted.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), "nginx's own $request_id reaches the client"
    assert predicted.json()["request_id"] == request_id
    time.sleep(0.2)
    nginx_lines = [json.loads(line) for line in access_log.read_text().splitlines()]
    assert any(line["request_id"] == request_id and line["path"] == "/predict" for line in nginx_lines)
    server_lines = [r for r in live.log_records() if r.get("request_id") == request_id and r["logger"] == "nexus.request"]
    assert [line["path"] for line in server_lines] == ["/predict"]


def test_a_client_request_id_passes_through_nginx_unchanged(nginx):
    url, _ = nginx
    response = requests.get(f"{url}/models/iris", headers={"X-Request-ID": "from-the-client-1"}, timeout=5)
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "from-the-client-1"
