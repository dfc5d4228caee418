"""Triton's model configuration and statistics extensions through tritonclient, against the real server.

The statistics must be those of the whole server: requests spread over 4 gunicorn workers, and
whichever worker answers the statistics request sums what every worker counted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from tests import models
from tests.live.server import CLOSE, LiveServer, seed_demo_model, upload

httpclient = pytest.importorskip("tritonclient.http")
InferenceServerException = httpclient.InferenceServerException

SUCCESSES = 40
FAILURES = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """4 workers, the demo model, and a metrics directory the test can look into."""
    base = tmp_path_factory.mktemp("triton-extensions")
    seed_demo_model(base / "models")
    metrics_dir = base / "prometheus"
    started = LiveServer(base / "models", base / "logs", workers=4, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}).start()
    started.metrics_dir = metrics_dir
    yield started
    started.stop()


@pytest.fixture(scope="module")
def client(server):
    triton = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}", concurrency=8)
    yield triton
    triton.close()


def iris_input(datatype: str = "FP32") -> httpclient.InferInput:
    x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32 if datatype == "FP32" else np.float64)
    tensor = httpclient.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=True)
    return tensor


def per_worker(metrics_dir: Path, scratch: Path, model_id: str) -> dict[int, float]:
    """Each worker's own count of successful predictions, read from its file alone."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        alone = scratch / path.stem
        alone.mkdir()
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        counts[int(path.stem.split("_")[1])] = registry.get_sample_value(
            "model_predictions_total", {"model_id": model_id, "version": "v1.0.0", "status": "success"}) or 0.0
    return counts


def test_model_config(client):
    config = client.get_model_config("iris")
    assert config["name"] == "iris"
    assert (config["platform"], config["backend"]) == ("onnxruntime_onnx", "onnxruntime")
    assert config["max_batch_size"] > 0
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("input", "TYPE_FP32", [4])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
        ("output_label", "TYPE_INT64", []), ("output_probability", "TYPE_FP32", [-1])]
    assert client.get_model_config("iris", "v1.0.0") == config


def test_config_of_an_unknown_model_is_a_404(client):
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_config("ghost")
    assert raised.value.status() == "404" and "ghost" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.get_inference_statistics("ghost")
    assert raised.value.status() == "404"


def test_statistics_sum_every_worker(server, client, tmp_path):
    pending = [client.async_infer("iris", [iris_input()]) for _ in range(SUCCESSES)]
    for request in pending:
        assert request.get_result().as_numpy("output_label").tolist() == [0]
    for _ in range(FAILURES):  # the wrong datatype: a 400 once the model is known
        with pytest.raises(InferenceServerException):
            client.infer("iris", [iris_input("FP64")])

    served = per_worker(server.metrics_dir, tmp_path, "iris")
    assert sum(served.values()) == SUCCESSES
    assert sum(1 for count in served.values() if count) >= 2, f"all requests went to one worker: {served}"

    (entry,) = client.get_inference_statistics("iris")["model_stats"]
    assert (entry["name"], entry["version"]) == ("iris", "v1.0.0")
    assert entry["inference_count"] == entry["execution_count"] == SUCCESSES
    stats = entry["inference_stats"]
    assert stats["success"]["count"] == SUCCESSES and stats["fail"]["count"] == FAILURES
    assert stats["compute_infer"]["count"] == SUCCESSES and stats["compute_infer"]["ns"] > 0
    assert stats["queue"]["count"] == stats["compute_input"]["count"] == stats["compute_output"]["count"] == SUCCESSES

    # Whichever worker answers (a fresh connection each time), it reports the whole server.
    for _ in range(8):
        again = requests.get(server.url("/v2/models/iris/stats"), headers=CLOSE, timeout=5).json()
        assert again["model_stats"][0]["inference_stats"]["success"]["count"] == SUCCESSES
    assert client.get_inference_statistics("iris", "v1.0.0") == client.get_inference_statistics("iris")


def test_statistics_of_every_model(server, client):
    assert upload(server, models.identity(), "other").status_code == 201
    rows = client.get_inference_statistics()["model_stats"]
    assert [r["name"] for r in rows] == ["iris", "other"]
    assert rows[1]["inference_count"] == 0
