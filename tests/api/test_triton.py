"""Triton's model configuration and statistics extensions (/v2/models/.../config and .../stats)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from onnx import TensorProto

from tests import models
from tests.conftest import TOKEN, assert_error

# Triton's model-config names (model_config.proto's DataType), written out here as the oracle.
TRITON_TYPES = {
    TensorProto.BOOL: "TYPE_BOOL",
    TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.UINT16: "TYPE_UINT16",
    TensorProto.UINT32: "TYPE_UINT32",
    TensorProto.UINT64: "TYPE_UINT64",
    TensorProto.INT8: "TYPE_INT8",
    TensorProto.INT16: "TYPE_INT16",
    TensorProto.INT32: "TYPE_INT32",
    TensorProto.INT64: "TYPE_INT64",
    TensorProto.FLOAT16: "TYPE_FP16",
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.DOUBLE: "TYPE_FP64",
    TensorProto.STRING: "TYPE_STRING",
    TensorProto.BFLOAT16: "TYPE_BF16",
}
STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


def unique(prefix: str) -> str:
    """A model id no other test used: the metrics of this process outlive each test's app."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def only_ints(value) -> bool:
    """True when every number in ``value`` is a JSON integer (perf_analyzer reads them as uint64)."""
    if isinstance(value, dict):
        return all(only_ints(v) for v in value.values())
    if isinstance(value, list):
        return all(only_ints(v) for v in value)
    return not isinstance(value, float)


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("elem", list(TRITON_TYPES), ids=[TRITON_TYPES[e] for e in TRITON_TYPES])
def test_config_names_each_datatype_as_triton_does(client, upload_model, elem):
    upload_model(models.identity(elem), "typed")
    body = client.get("/v2/models/typed/config").get_json()
    assert body["name"] == "typed"
    assert (body["platform"], body["backend"]) == ("onnxruntime_onnx", "onnxruntime")
    assert body["max_batch_size"] > 0  # X and Y are [-1, 4]: the first dimension is a batch
    assert [(t["name"], t["data_type"], t["dims"]) for t in body["input"]] == [("X", TRITON_TYPES[elem], [4])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in body["output"]] == [("Y", TRITON_TYPES[elem], [4])]


def test_classifier_config_batches_and_leaves_the_batch_dimension_out(client, upload_model, iris_bytes):
    upload_model(iris_bytes, "iris", version="3")
    body = client.get("/v2/models/iris/config").get_json()
    assert body["max_batch_size"] > 0
    assert body["input"] == [{"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [4],
                               "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False}]
    assert [(t["name"], t["data_type"], t["dims"]) for t in body["output"]] == [
        ("output_label", "TYPE_INT64", []),  # [-1]: the batch alone
        ("output_probability", "TYPE_FP32", [-1]),  # the ZipMap, sent as [N, classes]
    ]
    assert client.get("/v2/models/iris/versions/3/config").get_json() == body


@pytest.mark.parametrize(
    ("model", "batching", "inputs", "outputs"),
    [
        (models.identity(shape=(2, 3)), False, [[2, 3]], [[2, 3]]),  # a fixed first dimension is no batch
        (models.total(), False, [[-1, 4]], [[]]),  # a 0-d output cannot carry a batch
        (models.identity(shape=("N", "M")), True, [[-1]], [[-1]]),  # symbolic dimensions are dynamic
        (models.add_mul(), True, [[3], [3]], [[3], [3]]),
    ],
    ids=["fixed", "scalar-output", "symbolic", "two-inputs"],
)
def test_batching_needs_a_dynamic_first_dimension_everywhere(client, upload_model, model, batching, inputs, outputs):
    upload_model(model, "m")
    body = client.get("/v2/models/m/config").get_json()
    assert (body["max_batch_size"] > 0) is batching
    if not batching:
        assert body["max_batch_size"] == 0
    assert [t["dims"] for t in body["input"]] == inputs
    assert [t["dims"] for t in body["output"]] == outputs


@pytest.mark.parametrize("model_id", ["iris", "pair", "words", "total", "fixed"])
def test_config_agrees_with_the_v2_metadata(client, upload_model, iris_bytes, model_id):
    """What perf_analyzer relies on: metadata shapes minus the batch dimension are the config's dims."""
    built = {"iris": iris_bytes, "pair": models.add_mul(), "words": models.identity(TensorProto.STRING, shape=(None, 3)),
             "total": models.total(), "fixed": models.identity(shape=(2, 3))}
    upload_model(built[model_id], model_id)
    metadata = client.get(f"/v2/models/{model_id}").get_json()
    config = client.get(f"/v2/models/{model_id}/config").get_json()
    skip = 1 if config["max_batch_size"] > 0 else 0
    for key, config_key in (("inputs", "input"), ("outputs", "output")):
        assert [(t["name"], t["shape"][skip:]) for t in metadata[key]] == [(t["name"], t["dims"]) for t in config[config_key]]
        wanted = ["TYPE_STRING" if t["datatype"] == "BYTES" else "TYPE_" + t["datatype"] for t in metadata[key]]
        assert [t["data_type"] for t in config[config_key]] == wanted


def test_config_of_an_unknown_model_or_version_is_the_v2_404(client, upload_model):
    upload_model(models.identity(), "m", version="v1")
    assert_error(client.get("/v2/models/ghost/config"), 404, "model_not_found", "ghost")
    assert_error(client.get("/v2/models/m/versions/v2/config"), 404, "version_not_found", "v2")
    assert_error(client.get("/v2/models/ghost/versions/1/config"), 404, "model_not_found", "ghost")
    assert client.get("/v2/models/m/versions/v1/config").status_code == 200


def test_config_and_stats_need_the_token_when_predictions_do(make_app, model_dir):
    from tests.conftest import upload

    client = make_app(api_token=TOKEN, protect_predict=True).test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert upload(client, models.identity(), "m", headers=auth).status_code == 201
    for path in ("/v2/models/m/config", "/v2/models/m/versions/v1/config", "/v2/models/stats", "/v2/models/m/stats",
                 "/v2/models/m/versions/v1/stats"):
        assert_error(client.get(path), 401, "unauthorized", "")
        assert client.get(path, headers=auth).status_code == 200, path


# -- statistics ---------------------------------------------------------------------------------


def test_stats_count_predictions_of_both_protocols(client, upload_model):
    model_id = unique("stats")
    upload_model(models.identity(), model_id, version="7")
    for _ in range(3):
        assert client.post("/predict", json={"model_id": model_id, "features": [1, 2, 3, 4]}).status_code == 200
    v2 = {"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": list(range(8))}]}
    for _ in range(2):
        assert client.post(f"/v2/models/{model_id}/infer", json=v2).status_code == 200
    assert client.post("/predict", json={"model_id": model_id, "features": [1, 2, 3]}).status_code == 400
    wrong = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]}
    assert client.post(f"/v2/models/{model_id}/infer", json=wrong).status_code == 400

    body = client.get(f"/v2/models/{model_id}/stats").get_json()
    assert only_ints(body)
    (entry,) = body["model_stats"]
    assert (entry["name"], entry["version"]) == (model_id, "7")
    assert entry["inference_count"] == entry["execution_count"] == 5
    stats = entry["inference_stats"]
    assert set(stats) == set(STAGES)
    assert stats["success"]["count"] == 5 and stats["fail"]["count"] == 2
    assert stats["compute_infer"]["count"] == 5 and stats["compute_infer"]["ns"] > 0
    # perf_analyzer refuses stats whose compute counts differ, and finds the model by a growing queue count.
    assert stats["queue"]["count"] == stats["compute_input"]["count"] == stats["compute_output"]["count"] == 5
    assert stats["cache_hit"] == stats["cache_miss"] == {"count": 0, "ns": 0}
    assert entry["batch_stats"] == []
    assert client.get(f"/v2/models/{model_id}/versions/7/stats").get_json() == body


def test_stats_of_a_model_never_used_are_zero(client, upload_model):
    model_id = unique("idle")
    upload_model(models.identity(), model_id)
    (entry,) = client.get(f"/v2/models/{model_id}/stats").get_json()["model_stats"]
    assert entry["last_inference"] == entry["inference_count"] == entry["execution_count"] == 0
    assert all(entry["inference_stats"][stage] == {"count": 0, "ns": 0} for stage in STAGES)


def test_stats_of_every_model_list_each_served_model_by_id(client, upload_model):
    first, second = sorted([unique("a"), unique("b")])
    upload_model(models.identity(), second)
    upload_model(models.add_mul(), first)
    client.post("/predict", json={"model_id": second, "features": [1, 2, 3, 4]})
    rows = client.get("/v2/models/stats").get_json()["model_stats"]
    assert [r["name"] for r in rows] == [first, second]
    assert [r["inference_count"] for r in rows] == [0, 1]


def test_stats_of_an_unknown_model_or_version_are_the_v2_404(client, upload_model):
    upload_model(models.identity(), "m", version="v1")
    assert_error(client.get("/v2/models/ghost/stats"), 404, "model_not_found", "ghost")
    assert_error(client.get("/v2/models/m/versions/v9/stats"), 404, "version_not_found", "v9")


def test_stats_read_the_request_durations_and_last_prediction_metrics(client, upload_model):
    """``metrics.prediction_done`` feeds success/fail counts, ns and last_inference."""
    from nexus.observability import metrics

    model_id = unique("timed")
    upload_model(models.identity(), model_id)
    before = time.time()
    metrics.prediction_done(model_id, "v1", "success", 0.25)
    metrics.prediction_done(model_id, "v1", "success", 0.5)
    metrics.prediction_done(model_id, "v1", "error", 0.125)
    after = time.time()
    (entry,) = client.get(f"/v2/models/{model_id}/stats").get_json()["model_stats"]
    assert entry["inference_stats"]["success"]["ns"] == 750_000_000
    assert entry["inference_stats"]["fail"]["ns"] == 125_000_000
    assert round(before * 1000) <= entry["last_inference"] <= round(after * 1000)


def test_predictions_feed_request_durations_and_last_inference(client, upload_model):
    model_id = unique("wired")
    upload_model(models.identity(), model_id)
    before = time.time()
    assert client.post("/predict", json={"model_id": model_id, "features": [1, 2, 3, 4]}).status_code == 200
    assert client.post("/predict", json={"model_id": model_id, "features": [1]}).status_code == 400
    (entry,) = client.get(f"/v2/models/{model_id}/stats").get_json()["model_stats"]
    stats = entry["inference_stats"]
    assert stats["success"]["ns"] >= stats["compute_infer"]["ns"] > 0
    assert stats["fail"]["ns"] > 0
    assert round(before * 1000) <= entry["last_inference"] <= round(time.time() * 1000)


WORKER = """
from nexus.observability import metrics
for _ in range({n}):
    metrics.prediction_done("shared", "v1", "success", 0.5 / {n})
    metrics.observe_inference("shared", "v1", 0.001)
metrics.prediction_done("shared", "v1", "error", 0.25)
"""


def test_stats_sum_the_multiprocess_files_of_every_worker(tmp_path, monkeypatch):
    """Under gunicorn each worker writes its own files; the stats are their sum, as /metrics is."""
    from nexus.observability import metrics

    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    for n in (3, 4):  # two "workers", each its own process
        subprocess.run([sys.executable, "-c", WORKER.format(n=n)], env=env, check=True, timeout=60)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    stats = metrics.model_statistics([("shared", "v1"), ("other", "v1")])
    shared = stats["shared", "v1"]
    assert (shared.success, shared.failure, shared.runs) == (7, 2, 7)
    assert shared.run_seconds == pytest.approx(0.007)
    assert (shared.success_seconds, shared.failure_seconds) == (1.0, 0.5)
    assert time.time() - 60 < shared.last_success <= time.time()
    assert stats["other", "v1"] == metrics.ModelStatistics()
