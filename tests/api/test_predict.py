"""POST /predict: shapes, every input type, outputs, and every refusal."""

from __future__ import annotations

import json
import re
import uuid

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests import models
from tests.api.test_upload import assert_error
from tests.conftest import TOKEN, files_in, upload

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def predict(client, body, **kwargs):
    return client.post("/predict", json=body, **kwargs)


def test_flat_features_are_one_sample_of_the_input_shape(client, upload_model, iris_bytes):
    upload_model(iris_bytes, "iris")
    response = predict(client, {"model_id": "iris", "features": [5.1, 3.5, 1.4, 0.2]})
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"model_id", "request_id", "prediction", "outputs", "latency_ms", "timestamp"}
    assert body["model_id"] == "iris" and body["prediction"] == [0]
    assert RFC3339.match(body["timestamp"]) and body["latency_ms"] > 0
    (probabilities,) = body["outputs"]["output_probability"]
    assert set(probabilities) == {"0", "1", "2"} and sum(probabilities.values()) == pytest.approx(1, abs=1e-5)
    assert body["request_id"] == response.headers["X-Request-ID"]


def test_nested_features_are_a_batch(client, upload_model, iris_bytes):
    upload_model(iris_bytes, "iris")
    body = predict(client, {"model_id": "iris", "features": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}).get_json()
    assert body["prediction"] == [0, 2] and len(body["outputs"]["output_probability"]) == 2


def test_linear_model_matches_numpy(client, upload_model):
    model, weights, bias = models.linear(in_features=4, out_features=3)
    upload_model(model, "lin")
    x = np.array([[0.5, -1.0, 2.0, 3.5], [1, 2, 3, 4]], np.float32)
    body = predict(client, {"model_id": "lin", "features": x.tolist()}).get_json()
    assert np.allclose(body["outputs"]["Y"], x @ weights + bias, atol=1e-5)
    assert np.allclose(body["prediction"], (x @ weights + bias).ravel(), atol=1e-5)


def test_multi_input_model_takes_inputs_by_name(client, upload_model):
    upload_model(models.add_mul(), "am")
    body = predict(client, {"model_id": "am", "inputs": {"A": [[1, 2, 3]], "B": [[4, 5, 6]]}}).get_json()
    assert body["outputs"] == {"SUM": [[5.0, 7.0, 9.0]], "PROD": [[4.0, 10.0, 18.0]]}
    assert body["prediction"] == [5.0, 7.0, 9.0]


@pytest.mark.parametrize(
    ("elem", "values"),
    [
        (TensorProto.FLOAT, [1.5, -2.25, 0.0]),
        (TensorProto.DOUBLE, [1e-300, 2.5, -1e300]),
        (TensorProto.FLOAT16, [1.5, -2.0, 0.25]),
        (TensorProto.INT8, [-128, 0, 127]),
        (TensorProto.INT16, [-32768, 0, 32767]),
        (TensorProto.INT32, [-(2**31), 0, 2**31 - 1]),
        (TensorProto.INT64, [-(2**63), 0, 2**63 - 1]),
        (TensorProto.UINT8, [0, 1, 255]),
        (TensorProto.UINT16, [0, 1, 65535]),
        (TensorProto.UINT32, [0, 1, 2**32 - 1]),
        (TensorProto.UINT64, [0, 1, 2**64 - 1]),
        (TensorProto.BOOL, [True, False, True]),
        (TensorProto.STRING, ["a", "ünï", ""]),
    ],
)
def test_every_input_type_round_trips(client, upload_model, elem, values):
    upload_model(models.identity(elem, shape=(None, 3)), "ident")
    response = predict(client, {"model_id": "ident", "features": values})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["outputs"]["Y"] == [values]


def test_nan_and_infinity_become_null_in_strict_json(client, upload_model):
    upload_model(models.divide(), "div")
    response = predict(client, {"model_id": "div", "features": [1.0, -1.0, 0.0]})

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    body = json.loads(response.get_data(as_text=True), parse_constant=refuse)
    assert body["outputs"]["Y"] == [[None, None, None]]


def test_request_id_in_the_body_names_the_request(client, upload_model):
    upload_model(models.identity(), "m")
    response = predict(client, {"model_id": "m", "features": [1, 2, 3, 4], "request_id": "client-7"})
    assert response.get_json()["request_id"] == "client-7" == response.headers["X-Request-ID"]


def test_request_id_header_is_echoed_or_replaced(client, upload_model):
    upload_model(models.identity(), "m")
    kept = predict(client, {"model_id": "m", "features": [1, 2, 3, 4]}, headers={"X-Request-ID": "edge-1"})
    assert kept.get_json()["request_id"] == "edge-1"
    replaced = predict(client, {"model_id": "m", "features": [1, 2, 3, 4]}, headers={"X-Request-ID": "has spaces"})
    assert uuid.UUID(replaced.get_json()["request_id"]).version == 4


BAD = [
    ({"model_id": "m"}, 400, "bad_input", "'features' (or 'inputs'"),
    ({"features": [1, 2, 3, 4]}, 400, "bad_input", "field 'model_id' is missing"),
    ({"model_id": 7, "features": [1, 2, 3, 4]}, 400, "bad_input", "must be a non-empty string"),
    ({"model_id": "ghost", "features": [1, 2, 3, 4]}, 404, "model_not_found", "model 'ghost' is not registered"),
    ({"model_id": "../m", "features": [1, 2, 3, 4]}, 400, "bad_input", "invalid model id"),
    ({"model_id": "m", "features": [1, 2, 3]}, 400, "bad_input", "needs 4 values, got 3"),
    ({"model_id": "m", "features": [[1, 2, 3, 4, 5]]}, 400, "bad_input", "expects shape [-1, 4], got [1, 5]"),
    ({"model_id": "m", "features": ["a", "b", "c", "d"]}, 400, "bad_input", "needs numbers"),
    ({"model_id": "m", "features": [1, None, 3, 4]}, 400, "bad_input", "null"),
    ({"model_id": "m", "features": [[1, 2, 3, 4], [1, 2]]}, 400, "bad_input", "rectangular"),
    ({"model_id": "m", "features": "1,2,3,4"}, 400, "bad_input", "must be a list"),
    ({"model_id": "m", "features": [1, 2, 3, 4], "inputs": {}}, 400, "bad_input", "not both"),
    ({"model_id": "m", "inputs": {}}, 400, "bad_input", "missing"),
    ({"model_id": "m", "inputs": {"X": [[1, 2, 3, 4]], "Z": [1]}}, 400, "bad_input", "no input named 'Z'"),
    ({"model_id": "m", "inputs": [1, 2]}, 400, "bad_input", "must be an object"),
    ({"model_id": "m", "features": [1, 2, 3, 4], "request_id": "bad id!"}, 400, "bad_input", "request_id"),
]


@pytest.mark.parametrize(("body", "status", "code", "words"), BAD)
def test_bad_requests_get_a_clear_json_error(client, upload_model, model_dir, body, status, code, words):
    upload_model(models.identity(), "m")
    before = files_in(model_dir)
    assert_error(predict(client, body), status, code, words)
    assert files_in(model_dir) == before


def test_features_on_a_multi_input_model_name_the_inputs(client, upload_model):
    upload_model(models.add_mul(), "am")
    assert_error(predict(client, {"model_id": "am", "features": [1, 2, 3]}), 400, "bad_input", "2 inputs (A, B)")


@pytest.mark.parametrize(
    ("elem", "values", "words"),
    [
        (TensorProto.INT32, [1.5, 2, 3], "whole numbers"),
        (TensorProto.INT8, [1, 2, 300], "out of range"),
        (TensorProto.UINT8, [-1, 2, 3], "out of range"),
        (TensorProto.FLOAT, [1e39, 0, 0], "out of range"),
        (TensorProto.FLOAT, [True, False, True], "needs numbers"),
        (TensorProto.BOOL, [1, 0, 1], "true/false"),
        (TensorProto.STRING, [1, 2, 3], "needs strings"),
    ],
)
def test_values_that_do_not_fit_the_input_type_get_400(client, upload_model, elem, values, words):
    upload_model(models.identity(elem, shape=(None, 3)), "typed")
    assert_error(predict(client, {"model_id": "typed", "features": values}), 400, "bad_input", words)


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "code", "words"),
    [
        (b"{not json", "application/json", 400, "bad_input", "not valid JSON"),
        (b"[1, 2]", "application/json", 400, "bad_input", "must be a JSON object"),
        (b"", "application/json", 400, "bad_input", "empty"),
        (b'{"model_id": "m"}', "text/plain", 415, "unsupported_media_type", "application/json"),
        (b'{"a": NaN}', "application/json", 400, "bad_input", "not valid JSON"),
    ],
)
def test_bodies_that_are_not_a_json_object(client, raw, content_type, status, code, words):
    assert_error(client.post("/predict", data=raw, content_type=content_type), status, code, words)


def test_body_over_the_limit_gets_413(make_app, upload_model):
    client = make_app(max_request_mb=0.001).test_client()
    upload(client, models.identity(), "m")
    response = predict(client, {"model_id": "m", "features": [1.0] * 2000})
    assert_error(response, 413, "too_large", "0.001 MB")


def test_failure_inside_the_model_is_a_json_error_without_internals(client, upload_model):
    upload_model(models.reshape_to([5]), "reshaper")
    response = predict(client, {"model_id": "reshaper", "features": [1, 2, 3, 4]})
    assert response.status_code in (400, 500)
    body = response.get_json()
    assert body["code"] in ("bad_input", "inference_failed") and "model" in body["error"]
    assert "Traceback" not in body["error"] and ".cc:" not in body["error"] and "onnxruntime_src" not in body["error"]


def test_a_model_onnxruntime_cannot_load_is_refused_with_its_reason(client, model_dir):
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["X"], ["Y"])], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    response = upload(client, data, "weird")
    assert_error(response, 400, "invalid_model", "NoSuchOp")
    assert files_in(model_dir) == []
    assert onnx  # the model was built with the onnx package, not shipped


@pytest.mark.parametrize(("protect", "header", "status"), [(False, None, 200), (True, None, 401), (True, f"Bearer {TOKEN}", 200)])
def test_predict_is_open_unless_protected(make_app, protect, header, status):
    client = make_app(api_token=TOKEN, protect_predict=protect).test_client()
    upload(client, models.identity(), "m", headers={"Authorization": f"Bearer {TOKEN}"})
    headers = {"Authorization": header} if header else {}
    assert predict(client, {"model_id": "m", "features": [1, 2, 3, 4]}, headers=headers).status_code == status


def test_get_on_predict_is_405_json(client):
    assert_error(client.get("/predict"), 405, "method_not_allowed", "not allowed")
