"""A real Prometheus scrapes the real gunicorn and reads back exactly the predictions made."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import requests

from tests import models
from tests.live.server import CLOSE, free_port, stop_process, upload

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian package prometheus)")


@pytest.fixture
def prometheus(live, tmp_path):
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: nexus\n    static_configs:\n      - targets: ['127.0.0.1:{live.port}']\n"
    )
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            pytest.fail("prometheus did not become ready:\n" + (tmp_path / "prometheus.log").read_text())
        yield url
    finally:
        stop_process(proc)
        log.close()


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
