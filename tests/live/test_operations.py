"""Operations against the real gunicorn with 4 workers: metrics, logs, CORS, probes, shutdown."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import pytest
import requests

from tests import models
from tests.live.server import (
    CLOSE,
    metric_samples,
    predict,
    sigterm_during,
    total,
    upload,
)


def test_request_counts_sum_over_all_workers(live):
    before = total(metric_samples(live), "http_requests_total")
    pids = set()
    for i in range(40):
        response = predict(live) if i % 2 else requests.get(live.url("/health"), headers=CLOSE, timeout=5)
        assert response.status_code == 200
    after = metric_samples(live)
    assert total(after, "http_requests_total") == before + 40
    assert total(after, "http_requests_total", endpoint="/metrics") == 0
    assert total(after, "model_predictions_total", model_id="iris", status="success") >= 20
    pids.update(live.worker_pids())
    assert len(pids) == 4


def test_models_loaded_is_the_model_count_not_a_sum_over_workers(live):
    assert total(metric_samples(live), "models_loaded") == 1
    assert upload(live, models.identity(), "extra").status_code == 201
    for _ in range(8):
        predict(live, "extra", (1, 2, 3, 4))  # the other workers notice the new model
    assert total(metric_samples(live), "models_loaded") == 2
    assert requests.delete(live.url("/models/extra"), headers=CLOSE, timeout=5).status_code == 200
    for _ in range(8):
        predict(live)  # the other workers notice the delete (one still opening "extra" would report 2 last)
    assert total(metric_samples(live), "models_loaded") == 1


def test_a_killed_worker_keeps_its_counts_and_its_gauge_vanishes(live):
    for _ in range(12):
        predict(live)
    before = metric_samples(live)
    victim = live.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (victim in live.worker_pids() or len(live.worker_pids()) < 4):
        time.sleep(0.1)
    assert victim not in live.worker_pids() and len(live.worker_pids()) == 4
    after = metric_samples(live)
    assert total(after, "model_predictions_total", model_id="iris") >= total(before, "model_predictions_total", model_id="iris")
    assert total(after, "http_requests_total") >= total(before, "http_requests_total")
    assert total(after, "models_loaded") == 1


def test_unknown_paths_add_at_most_one_series(live):
    with requests.Session() as session:
        for _ in range(1000):
            session.get(live.url(f"/no/{uuid.uuid4().hex}"), timeout=5)
    samples = metric_samples(live)
    endpoints = {dict(pairs)["endpoint"] for (name, pairs) in samples if name == "http_requests_total"}
    assert "<unmatched>" in endpoints
    assert not any(e.startswith("/no/") for e in endpoints)
    assert total(samples, "http_requests_total", endpoint="<unmatched>") >= 1000


def test_upload_delete_cycles_leave_no_series_behind(live):
    predict(live)
    before = len(metric_samples(live))
    for cycle in range(10):
        model_id = f"cycle-{cycle}"
        assert upload(live, models.identity(), model_id).status_code == 201
        for _ in range(4):  # spread over the workers, so each keeps its own counters of the model
            assert predict(live, model_id, (1, 2, 3, 4)).status_code == 200
        assert requests.delete(live.url(f"/models/{model_id}"), headers=CLOSE, timeout=10).status_code == 200
    predict(live)
    samples = metric_samples(live)
    assert not any(dict(pairs).get("model_id", "").startswith("cycle-") for _, pairs in samples)
    assert len(samples) <= before + 40  # request series of the routes used, not per model


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian package prometheus)")
def test_metrics_pass_promtool(live):
    predict(live)
    text = requests.get(live.url("/metrics"), timeout=5).text
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_log_line_is_json_and_request_lines_carry_the_request_id(live):
    ids = [f"trace-{uuid.uuid4().hex[:8]}" for _ in range(6)]
    for rid in ids[:3]:
        predict(live, **{"X-Request-ID": rid})
    for rid in ids[3:]:
        requests.get(live.url("/models/ghost"), headers={**CLOSE, "X-Request-ID": rid}, timeout=5)
    time.sleep(0.3)
    records = live.log_records()  # raises if any line is not JSON
    assert all({"time", "level", "message", "logger"} <= set(r) for r in records)
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", r["time"]) for r in records)
    by_id = {r.get("request_id"): r for r in records if r.get("logger") == "nexus.request"}
    for rid in ids:
        line = by_id[rid]
        assert {"method", "path", "status", "duration_ms"} <= set(line)
    for rid in ids[:3]:
        assert by_id[rid]["model_id"] == "iris" and by_id[rid]["outcome"] == "success" and by_id[rid]["latency_ms"] > 0
    assert by_id[ids[3]]["status"] == 404
    assert any(r["logger"] == "gunicorn.error" and "Booting worker" in r["message"] for r in records)
    assert live.stderr_path.read_text().strip() == ""


def test_request_id_round_trip_and_generated_ids(live):
    given = predict(live, **{"X-Request-ID": "client-chosen-id"})
    assert given.headers["X-Request-ID"] == "client-chosen-id" == given.json()["request_id"]
    made = requests.get(live.url("/nope"), headers=CLOSE, timeout=5)
    assert uuid.UUID(made.headers["X-Request-ID"]).version == 7
    assert made.json()["request_id"] == made.headers["X-Request-ID"]


def test_cors_preflight_and_headers(live):
    preflight = requests.options(live.url("/predict"), headers={**CLOSE, "Origin": "https://ui.example",
                                                                 "Access-Control-Request-Method": "POST",
                                                                 "Access-Control-Request-Headers": "content-type"}, timeout=5)
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in preflight.headers["Access-Control-Allow-Headers"]
    actual = predict(live, Origin="https://ui.example")
    assert actual.headers["Access-Control-Allow-Origin"] == "*"
    assert "X-Request-ID" in actual.headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Credentials" not in actual.headers


def test_probes(live):
    live_probe = requests.get(live.url("/health/live"), headers=CLOSE, timeout=5)
    ready = requests.get(live.url("/health/ready"), headers=CLOSE, timeout=5)
    assert live_probe.status_code == 200 and live_probe.json()["status"] == "ok"
    assert ready.status_code == 200 and ready.json()["models"] == 1
    assert requests.get(live.url("/health"), headers=CLOSE, timeout=5).json()["status"] == "ok"


def test_ready_is_503_with_a_reason_when_the_model_directory_goes_away(make_server, tmp_path):
    server = make_server(workers=1)
    moved = tmp_path / "unmounted"
    server.model_dir.rename(moved)  # as when the volume is unmounted under the server
    try:
        response = requests.get(server.url("/health/ready"), timeout=5)
        assert response.status_code == 503 and "not readable" in response.json()["error"]
        assert response.json()["code"] == "not_ready"
        assert requests.get(server.url("/health/live"), timeout=5).status_code == 200
    finally:
        moved.rename(server.model_dir)
    assert requests.get(server.url("/health/ready"), timeout=5).status_code == 200


def test_sigterm_lets_an_in_flight_prediction_finish_and_exits_0(make_server):
    server = make_server(workers=2)
    assert upload(server, models.slow_loop(), "slow").status_code == 201
    iterations = models.slow_iterations(4.0)  # calibration on a busy machine can only make the run shorter
    result = {}

    def slow_request():
        response = requests.post(server.url("/predict"), json={"model_id": "slow", "inputs": {"N": [iterations]}}, timeout=30)
        result.update(status=response.status_code, finished=time.monotonic())

    started, code = sigterm_during(server, slow_request)
    assert result["status"] == 200
    assert result["finished"] > started  # it was still running when SIGTERM came, and was let finish
    assert code == 0
    assert time.monotonic() - started < 15
    # Every worker left cleanly: none aborted in onnxruntime's teardown (SIGABRT, a C++ message on stderr).
    assert server.stderr_path.read_text() == ""
    assert not [r for r in server.log_records() if "SIGABRT" in r["message"] or "was sent" in r["message"]]


@pytest.mark.parametrize(("host", "token", "warned"), [("0.0.0.0", None, True), ("0.0.0.0", "t0ken", False), ("127.0.0.1", None, False)])
def test_open_writes_on_a_public_address_are_warned_about_at_start(make_server, host, token, warned):
    server = make_server(workers=1, host=host, env={"NEXUS_API_TOKEN": token} if token else {})
    warnings = [r for r in server.log_records() if r["level"] == "WARNING" and "open to anyone" in r["message"]]
    assert bool(warnings) is warned
    if warned:
        assert f"0.0.0.0:{server.port}" in warnings[0]["message"] and "NEXUS_API_TOKEN" in warnings[0]["message"]


def test_a_start_removes_the_metrics_directories_of_killed_masters(make_server):
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid now names no process
    root = tempfile.gettempdir()
    stale = tempfile.mkdtemp(prefix=f"nexus-metrics-{dead.pid}-", dir=root)
    alive = tempfile.mkdtemp(prefix=f"nexus-metrics-{os.getpid()}-", dir=root)
    try:
        with open(os.path.join(stale, "counter_1.db"), "wb") as leftover:
            leftover.write(b"\0" * 16)
        make_server(workers=1)
        assert not os.path.exists(stale)
        assert os.path.isdir(alive)  # a live master's directory is left alone
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(alive, ignore_errors=True)
