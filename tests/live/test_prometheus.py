"""A real Prometheus scrapes the real gunicorn and reads back exactly the predictions made."""

from __future__ import annotations

import shutil
import time

import pytest
import requests

from tests import models
from tests.live.server import CLOSE, running_prometheus, upload

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian package prometheus)")


@pytest.fixture
def prometheus(live, tmp_path):
    with running_prometheus(tmp_path, f"127.0.0.1:{live.port}") as url:
        yield url


def query(url: str, expression: str) -> float | None:
    result = requests.get(f"{url}/api/v1/query", params={"query": expression}, timeout=5).json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_reads_back_every_prediction(live, prometheus):
    assert upload(live, models.identity(), "scraped").status_code == 201
    count = 37
    for _ in range(count):
        response = requests.post(live.url("/predict"), json={"model_id": "scraped", "features": [1, 2, 3, 4]}, headers=CLOSE, timeout=5)
        assert response.status_code == 200
    expression = 'sum(model_predictions_total{model_id="scraped",status="success"})'
    deadline = time.monotonic() + 30
    seen = None
    while time.monotonic() < deadline:
        seen = query(prometheus, expression)
        if seen == count:
            break
        time.sleep(0.5)
    assert seen == count
    assert query(prometheus, 'up{job="nexus"}') == 1
    assert query(prometheus, "models_loaded") == 2
