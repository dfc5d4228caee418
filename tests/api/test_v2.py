"""The Open Inference Protocol (V2) routes, JSON and binary, through Flask's test client."""

from __future__ import annotations

import struct

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from onnx import TensorProto

from tests import models
from tests.conftest import TOKEN, files_in

HEADER = "Inference-Header-Content-Length"


def infer(client, name, body, binary: bytes = b"", path=None, headers=None):
    header = orjson.dumps(body)
    extra = dict(headers or {})
    if binary:
        extra[HEADER] = str(len(header))
    return client.post(path or f"/v2/models/{name}/infer", data=header + binary, headers=extra,
                       content_type="application/octet-stream" if binary else "application/json")


def split(response):
    """Return (JSON header, binary tail) of an inference response."""
    length = response.headers.get(HEADER)
    if length is None:
        return response.get_json(), b""
    return orjson.loads(response.data[: int(length)]), response.data[int(length):]


def test_server_metadata_names_the_extensions(client):
    body = client.get("/v2").get_json()
    assert body["name"] == "model-nexus"
    assert {"binary_tensor_data", "model_repository"} <= set(body["extensions"])


def test_server_live_and_ready(app, client):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 503  # nothing loaded yet in this worker
    app.extensions["nexus"].registry.sync()
    assert client.get("/v2/health/ready").status_code == 200


def test_model_metadata_uses_v2_datatypes_and_minus_one_for_dynamic_dims(client, upload_model, iris_bytes):
    upload_model(iris_bytes, "iris", version="3")
    body = client.get("/v2/models/iris").get_json()
    assert body == {
        "name": "iris",
        "versions": ["3"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "output_label", "datatype": "INT64", "shape": [-1]},
            {"name": "output_probability", "datatype": "FP32", "shape": [-1, -1]},
        ],
    }
    assert client.get("/v2/models/iris/versions/3").status_code == 200
    missing = client.get("/v2/models/iris/versions/4")
    assert missing.status_code == 404 and missing.get_json()["code"] == "version_not_found"


def test_model_ready_is_404_for_unknown_model(client, upload_model):
    upload_model(models.identity(), "m")
    assert client.get("/v2/models/m/ready").status_code == 200
    response = client.get("/v2/models/nope/ready")
    assert response.status_code == 404 and response.get_json()["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("elem", "datatype", "values"),
    [
        (TensorProto.FLOAT, "FP32", [1.5, -2.0, 3.25, 0.0]),
        (TensorProto.DOUBLE, "FP64", [1.5, -2.0, 3.25, 1e300]),
        (TensorProto.FLOAT16, "FP16", [1.5, -2.0, 3.25, 0.0]),
        (TensorProto.INT8, "INT8", [-128, 0, 1, 127]),
        (TensorProto.UINT8, "UINT8", [0, 1, 200, 255]),
        (TensorProto.INT16, "INT16", [-300, 0, 1, 300]),
        (TensorProto.UINT16, "UINT16", [0, 1, 2, 65535]),
        (TensorProto.INT32, "INT32", [-(2**31), 0, 1, 2**31 - 1]),
        (TensorProto.UINT32, "UINT32", [0, 1, 2, 2**32 - 1]),
        (TensorProto.INT64, "INT64", [-(2**63), 0, 1, 2**63 - 1]),
        (TensorProto.UINT64, "UINT64", [0, 1, 2, 2**64 - 1]),
        (TensorProto.BOOL, "BOOL", [True, False, False, True]),
        (TensorProto.STRING, "BYTES", ["a", "", "ünï", "long string"]),
    ],
)
def test_json_and_binary_paths_give_identical_tensors(client, upload_model, elem, datatype, values):
    upload_model(models.identity(elem, shape=(None, 2)), "ident")
    nested = [values[:2], values[2:]]
    as_json = infer(client, "ident", {"inputs": [{"name": "X", "shape": [2, 2], "datatype": datatype, "data": nested}]})
    assert as_json.status_code == 200, as_json.get_json()
    out_json = as_json.get_json()["outputs"][0]
    assert out_json["datatype"] == datatype and out_json["shape"] == [2, 2]

    raw = _to_wire(values, datatype)
    body = {
        "inputs": [{"name": "X", "shape": [2, 2], "datatype": datatype, "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "Y", "parameters": {"binary_data": True}}],
    }
    as_binary = infer(client, "ident", body, raw)
    assert as_binary.status_code == 200
    assert as_binary.mimetype == "application/octet-stream"
    header, tail = split(as_binary)
    assert header["outputs"][0]["parameters"]["binary_data_size"] == len(tail)
    assert tail == raw  # byte-identical round trip
    assert tail == _to_wire(out_json["data"], datatype)  # and the same tensor as the JSON path


def _to_wire(values, datatype) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
    numpy_type = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT8": "i1", "UINT8": "u1", "INT16": "<i2", "UINT16": "<u2",
                  "INT32": "<i4", "UINT32": "<u4", "INT64": "<i8", "UINT64": "<u8", "BOOL": "?"}[datatype]
    return np.array(values, dtype=numpy_type).tobytes()


def test_infer_matches_onnxruntime_and_returns_only_requested_outputs(client, upload_model):
    upload_model(models.add_mul(), "am")
    a = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    b = [[0.5, 0.5, 0.5], [2.0, 2.0, 2.0]]
    body = {
        "id": "req-7",
        "inputs": [
            {"name": "A", "shape": [2, 3], "datatype": "FP32", "data": [x for row in a for x in row]},
            {"name": "B", "shape": [2, 3], "datatype": "FP32", "data": b},
        ],
        "outputs": [{"name": "PROD"}],
    }
    response = infer(client, "am", body)
    assert response.status_code == 200
    result = response.get_json()
    assert result["id"] == "req-7" and result["model_name"] == "am" and result["model_version"] == "v1"
    assert [o["name"] for o in result["outputs"]] == ["PROD"]
    session = ort.InferenceSession(models.add_mul(), providers=["CPUExecutionProvider"])
    expected = session.run(["PROD"], {"A": np.array(a, np.float32), "B": np.array(b, np.float32)})[0]
    assert np.array_equal(np.array(result["outputs"][0]["data"], np.float32).reshape(2, 3), expected)


def test_zipmap_output_becomes_a_matrix_with_its_keys(client, upload_model, iris_bytes):
    upload_model(iris_bytes, "iris")
    body = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}],
            "parameters": {"binary_data_output": True}}
    header, tail = split(infer(client, "iris", body))
    label, probability = header["outputs"]
    assert label["datatype"] == "INT64"
    assert probability["datatype"] == "FP32" and probability["shape"] == [2, 3]
    assert probability["parameters"]["keys"] == [0, 1, 2]
    labels = np.frombuffer(tail[: label["parameters"]["binary_data_size"]], "<i8")
    matrix = np.frombuffer(tail[label["parameters"]["binary_data_size"]:], "<f4").reshape(2, 3)
    assert labels.tolist() == [0, 2]
    assert np.allclose(matrix.sum(axis=1), 1.0, atol=1e-5)
    assert matrix.argmax(axis=1).tolist() == [0, 2]


BAD_INFER = [
    ({"inputs": []}, "non-empty list"),
    ({"inputs": [{"name": "Z", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, "no input named 'Z'"),
    ({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}, "is FP32 in the model"),
    ({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]}, "needs 4 values, got 3"),
    ({"inputs": [{"name": "X", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]}, "expects shape [-1, 4]"),
    ({"inputs": [{"name": "X", "shape": [1, -4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, "non-negative integers"),
    ({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ["a", "b", "c", "d"]}]}, "needs numbers"),
    ({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32"}]}, "neither 'data'"),
    ({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}], "outputs": [{"name": "nope"}]}, "no output named 'nope'"),
    ({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}] * 2}, "input 'X' is given twice"),
    ({"id": {}, "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, "field 'id' must be a string"),
    ({"inputs": [{"name": "X", "shape": [1] * 65, "datatype": "FP32", "data": [1]}]}, "65 dimensions; at most 64"),
    ({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}], "parameters": "x"},
     "the request: 'parameters' must be an object"),
    ({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4], "parameters": [1]}]},
     "input 'X': 'parameters' must be an object"),
    ({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}], "outputs": [{"name": "Y", "parameters": 3}]},
     "output 'Y': 'parameters' must be an object"),
]


@pytest.mark.parametrize(("body", "message"), BAD_INFER)
def test_bad_infer_requests_get_400_with_the_reason(client, upload_model, body, message):
    upload_model(models.identity(), "m")
    response = infer(client, "m", body)
    assert response.status_code == 400
    error = response.get_json()
    assert error["code"] == "bad_input" and message in error["error"]
    assert response.headers["X-Request-ID"] == error["request_id"]


@pytest.mark.parametrize(
    ("header_value", "tail", "message"),
    [
        ("999999", b"", "JSON header's length"),
        ("abc", b"", "JSON header's length"),
        ("\u00b2", b"", "JSON header's length"),  # a superscript two: str.isdigit() says yes, int() says no
        (None, b"\x00" * 8, "not claimed"),  # binary bytes nobody asked for
    ],
)
def test_bad_binary_framing_gets_400(client, upload_model, header_value, tail, message):
    upload_model(models.identity(), "m")
    body = orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    length = str(len(body)) if header_value is None else header_value
    response = client.post("/v2/models/m/infer", data=body + tail, headers={HEADER: length})
    assert response.status_code == 400 and message in response.get_json()["error"]


def test_binary_size_that_does_not_match_the_shape_gets_400(client, upload_model):
    upload_model(models.identity(), "m")
    raw = np.zeros(3, "<f4").tobytes()
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}]}
    response = infer(client, "m", body, raw)
    assert response.status_code == 400 and "needs 16 bytes, got 12" in response.get_json()["error"]


def test_unknown_model_is_404(client):
    response = infer(client, "ghost", {"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1]}]})
    assert response.status_code == 404 and response.get_json()["code"] == "model_not_found"


def test_unload_keeps_the_files_and_load_serves_again(client, upload_model, model_dir):
    upload_model(models.identity(), "m")
    before = files_in(model_dir)
    assert client.post("/v2/repository/models/m/unload").status_code == 200
    assert client.get("/v2/models/m/ready").status_code == 404
    unloaded = client.post("/predict", json={"model_id": "m", "features": [1, 2, 3, 4]})
    assert unloaded.status_code == 404 and unloaded.get_json()["code"] == "model_unloaded"
    index = client.post("/v2/repository/index").get_json()
    assert index == [{"name": "m", "version": "v1", "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert set(before) <= set(files_in(model_dir))
    assert client.post("/v2/repository/models/m/load").status_code == 200
    assert client.post("/predict", json={"model_id": "m", "features": [1, 2, 3, 4]}).status_code == 200
    assert client.post("/v2/repository/index", json={"ready": True}).get_json() == [{"name": "m", "version": "v1", "state": "READY"}]
    assert files_in(model_dir) == before


def test_repository_changes_need_the_token_when_one_is_set(make_app, model_dir):
    client = make_app(api_token=TOKEN).test_client()
    from tests.conftest import upload

    assert upload(client, models.identity(), "m", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 201
    assert client.post("/v2/repository/models/m/unload").status_code == 401
    assert client.post("/v2/repository/models/m/unload", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_load_of_unknown_model_is_404(client):
    response = client.post("/v2/repository/models/ghost/load")
    assert response.status_code == 404
