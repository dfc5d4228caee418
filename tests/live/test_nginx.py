"""deploy/nginx.conf in front of the real gunicorn: large uploads, predictions, one request id end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
import requests

from tests import models
from tests.live.server import ROOT, free_port

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian package nginx-light)")


def _config(tmp_path, listen_port: int, upstream_port: int) -> str:
    """The shipped config, pointed at this test's ports and files (nothing else changes)."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    replacements = [
        (r"listen 8000;", f"listen 127.0.0.1:{listen_port};"),
        (r"server 127\.0\.0\.1:8080;", f"server 127.0.0.1:{upstream_port};"),
        (r"pid /tmp/nexus-nginx\.pid;", f"pid {tmp_path}/nginx.pid;"),
        (r"error_log stderr warn;", f"error_log {tmp_path}/error.log warn;"),
        (r"access_log /dev/stdout nexus_json;", f"access_log {tmp_path}/access.log nexus_json;"),
        (r"/tmp/nexus-nginx-", f"{tmp_path}/temp-"),
    ]
    for pattern, value in replacements:
        text, count = re.subn(pattern, value, text)
        assert count, f"deploy/nginx.conf no longer has {pattern!r}"
    if os.geteuid() == 0:
        text = "user root;\n" + text  # workers may then write the test's temp directories
    return text


@pytest.fixture
def nginx(live, tmp_path):
    port = free_port()
    config = tmp_path / "nginx.conf"
    config.write_text(_config(tmp_path, port, live.port))
    checked = subprocess.run([NGINX, "-t", "-c", str(config), "-p", str(tmp_path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    proc = subprocess.Popen([NGINX, "-c", str(config), "-p", str(tmp_path), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                requests.get(f"{url}/health/live", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.1)
        yield url, tmp_path / "access.log"
    finally:
        proc.terminate()
        proc.wait(10)


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
