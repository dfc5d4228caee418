"""POST /predict: shapes, every input type, outputs, and every refusal."""

from __future__ import annotations

import re
import uuid

import numpy as np
import pytest
from onnx import TensorProto

from tests import models
from tests.conftest import TOKEN, assert_error, files_in, metric, strict_json, upload


def case_id(value):
    """Name table rows by their ONNX type and values, not by position."""
    if isinstance(value, int) and not isinstance(value, bool):
        return TensorProto.DataType.Name(value)
    return repr(value)[:40] if isinstance(value, list) else None


RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def predict(client, body, **kwargs):
    return client.post("/predict", json=body, **kwargs)


def test_flat_features_are_reshaped_to_one_row(client, upload_model):
    upload_model(models.identity(shape=(None, 4)), "m")
    response = predict(client, {"model_id": "m", "features": [1, 2, 3, 4]})
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = strict_json(response)
    assert body["outputs"]["Y"] == [[1.0, 2.0, 3.0, 4.0]]
    assert body["prediction"] == [1.0, 2.0, 3.0, 4.0]


def test_iris_predicts_setosa_with_probabilities_per_class(client, upload_model, iris_bytes):
    upload_model(iris_bytes, "iris")
    response = predict(client, {"model_id": "iris", "features": [5.1, 3.5, 1.4, 0.2]})
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"model_id", "model_version", "request_id", "prediction", "outputs", "latency_ms", "timestamp"}
    assert body["model_version"] == "v1" and response.headers["X-Model-Version"] == "v1"
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
    ids=case_id,
)
def test_every_input_type_round_trips(client, upload_model, elem, values):
    upload_model(models.identity(elem, shape=(None, 3)), "ident")
    response = predict(client, {"model_id": "ident", "features": values})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["outputs"]["Y"] == [values]


def test_nan_and_infinity_become_null_in_strict_json(client, upload_model):
    upload_model(models.divide(), "div")
    response = predict(client, {"model_id": "div", "features": [1.0, -1.0, 0.0]})
    assert response.status_code == 200
    body = strict_json(response)
    assert body["outputs"]["Y"] == [[None, None, None]] and body["prediction"] == [None, None, None]
    assert b"NaN" not in response.data and b"Infinity" not in response.data


def test_request_id_in_the_body_names_the_request(client, upload_model):
    upload_model(models.identity(), "m")
    response = predict(client, {"model_id": "m", "features": [1, 2, 3, 4], "request_id": "client-7"})
    assert response.get_json()["request_id"] == "client-7" == response.headers["X-Request-ID"]


@pytest.mark.parametrize("given", ["edge-1", "nginx:req.42_X", "r" * 128])
def test_a_valid_request_id_header_is_echoed(client, upload_model, given):
    upload_model(models.identity(), "m")
    response = predict(client, {"model_id": "m", "features": [1, 2, 3, 4]}, headers={"X-Request-ID": given})
    assert response.status_code == 200
    assert response.get_json()["request_id"] == given == response.headers["X-Request-ID"]


@pytest.mark.parametrize("given", ["r" * 200, "has spaces", "semi;colon", ""])
def test_an_invalid_request_id_header_is_replaced_by_a_uuid7(client, upload_model, given):
    upload_model(models.identity(), "m")
    response = predict(client, {"model_id": "m", "features": [1, 2, 3, 4]}, headers={"X-Request-ID": given})
    assert response.status_code == 200
    request_id = response.get_json()["request_id"]
    assert request_id == response.headers["X-Request-ID"] != given
    assert uuid.UUID(request_id).version == 7


BAD = [
    ({"model_id": "m"}, 400, "bad_input", "'features' (or 'inputs'"),
    ({"features": [1, 2, 3, 4]}, 400, "bad_input", "field 'model_id' is missing"),
    ({"model_id": 7, "features": [1, 2, 3, 4]}, 400, "bad_input", "field 'model_id' must be a non-empty string"),
    ({"model_id": ["m"], "features": [1, 2, 3, 4]}, 400, "bad_input", "field 'model_id' must be a non-empty string"),
    ({"model_id": "", "features": [1, 2, 3, 4]}, 400, "bad_input", "field 'model_id' must be a non-empty string"),
    ({"model_id": "x", "features": [1, 2, 3, 4]}, 404, "model_not_found", "model 'x' is not registered"),
    ({"model_id": "../m", "features": [1, 2, 3, 4]}, 400, "bad_input", "invalid model id"),
    ({"model_id": "m", "features": [1, 2, 3]}, 400, "bad_input", "needs 4 values, got 3"),
    ({"model_id": "m", "features": [1, 2, 3, 4, 5]}, 400, "bad_input", "needs 4 values, got 5"),
    ({"model_id": "m", "features": [[1, 2, 3, 4, 5]]}, 400, "bad_input", "expects shape [-1, 4], got [1, 5]"),
    ({"model_id": "m", "features": [[[1, 2, 3, 4]]]}, 400, "bad_input", "expects shape [-1, 4], got [1, 1, 4]"),
    ({"model_id": "m", "features": []}, 400, "bad_input", "input 'X'"),
    ({"model_id": "m", "features": ["a", "b", "c", "d"]}, 400, "bad_input", "needs numbers"),
    ({"model_id": "m", "features": [1, None, 3, 4]}, 400, "bad_input", "null"),
    ({"model_id": "m", "features": [[1, 2, 3, 4], [1, None, 3, 4]]}, 400, "bad_input", "null"),
    ({"model_id": "m", "features": [1, "2", 3, 4]}, 400, "bad_input", "needs numbers"),
    ({"model_id": "m", "features": [1, {"a": 2}, 3, 4]}, 400, "bad_input", "needs numbers"),
    ({"model_id": "m", "features": [[1, 2, 3, 4], [1, 2]]}, 400, "bad_input", "rectangular"),
    ({"model_id": "m", "features": "1,2,3,4"}, 400, "bad_input", "must be a list"),
    ({"model_id": "m", "features": 4}, 400, "bad_input", "must be a list"),
    ({"model_id": "m", "features": {"X": [1, 2, 3, 4]}}, 400, "bad_input", "must be a list"),
    ({"model_id": "m", "features": [1, 2, 3, 4], "inputs": {}}, 400, "bad_input", "not both"),
    ({"model_id": "m", "inputs": {}}, 400, "bad_input", "input(s) 'X' missing for model 'm'"),
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


MULTI_INPUT_BAD = [
    ({"features": [1, 2, 3]}, "model 'am' has 2 inputs (A, B); send 'inputs'"),
    ({"inputs": {"A": [[1, 2, 3]]}}, "input(s) 'B' missing for model 'am'"),
    ({"inputs": {"A": [[1, 2, 3]], "B": [[1, 2, 3]], "C": [[1, 2, 3]]}}, "model 'am' has no input named 'C'"),
    ({"inputs": {"A": [[1, 2, 3]], "B": [[1, 2]]}}, "input 'B' expects shape [-1, 3], got [1, 2]"),
    ({"inputs": {"A": [[1, 2, 3]], "B": "x"}}, "input 'B' must be a list"),
]


@pytest.mark.parametrize(("body", "words"), MULTI_INPUT_BAD)
def test_multi_input_mistakes_name_the_inputs(client, upload_model, model_dir, body, words):
    upload_model(models.add_mul(), "am")
    before = files_in(model_dir)
    assert_error(predict(client, {"model_id": "am", **body}), 400, "bad_input", words)
    assert files_in(model_dir) == before


@pytest.mark.parametrize(
    ("elem", "values", "words"),
    [
        (TensorProto.INT32, [1.5, 2, 3], "whole numbers"),
        (TensorProto.INT8, [1, 2, 300], "out of range"),
        (TensorProto.UINT8, [-1, 2, 3], "out of range"),
        (TensorProto.UINT8, [256, 2, 3], "out of range"),
        (TensorProto.INT64, [2.0**63, 0, 0], "out of range"),
        (TensorProto.UINT64, [2.0**64, 0, 0], "out of range"),
        (TensorProto.FLOAT, [1e39, 0, 0], "out of range"),
        (TensorProto.FLOAT, [True, False, True], "needs numbers"),
        (TensorProto.FLOAT, ["1", "2", "3"], "needs numbers"),
        (TensorProto.DOUBLE, [1.0, None, 3.0], "null"),
        (TensorProto.BOOL, [1, 0, 1], "true/false"),
        (TensorProto.STRING, [1, 2, 3], "needs strings"),
    ],
    ids=case_id,
)
def test_values_that_do_not_fit_the_input_type_get_400(client, upload_model, model_dir, elem, values, words):
    upload_model(models.identity(elem, shape=(None, 3)), "typed")
    before = files_in(model_dir)
    body = assert_error(predict(client, {"model_id": "typed", "features": values}), 400, "bad_input", words)
    assert "input 'X'" in body["error"]
    assert files_in(model_dir) == before


@pytest.mark.parametrize(
    ("elem", "values"),
    [(TensorProto.UINT64, [2**64 - 1, 2.0, 0]), (TensorProto.INT64, [2**63 - 1, 2.0, 0])],
    ids=["uint64-max", "int64-max"],
)
def test_integers_next_to_whole_floats_are_never_wrapped_around(client, upload_model, elem, values):
    upload_model(models.identity(elem, shape=(None, 3)), "typed")
    response = predict(client, {"model_id": "typed", "features": values})
    if response.status_code == 200:
        assert response.get_json()["outputs"]["Y"] == [[int(v) for v in values]]
    else:
        assert_error(response, 400, "bad_input", "input 'X'")


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "code", "words"),
    [
        (b"{not json", "application/json", 400, "bad_input", "not valid JSON"),
        (b"[1, 2]", "application/json", 400, "bad_input", "must be a JSON object"),
        (b"", "application/json", 400, "bad_input", "empty"),
        (b'{"model_id": "m"}', "text/plain", 415, "unsupported_media_type", "application/json"),
        (b'{"a": NaN}', "application/json", 400, "bad_input", "not valid JSON"),
        (b'"m"', "application/json", 400, "bad_input", "must be a JSON object, not str"),
        (b"null", "application/json", 400, "bad_input", "must be a JSON object"),
        (b'{"model_id": "m", "features": [1, 2, 3, 4]}', "text/plain", 415, "unsupported_media_type", "not 'text/plain'"),
        (b"model_id=m", "application/x-www-form-urlencoded", 415, "unsupported_media_type", "application/json"),
    ],
)
def test_bodies_that_are_not_a_json_object(client, upload_model, model_dir, raw, content_type, status, code, words):
    upload_model(models.identity(), "m")
    before = files_in(model_dir)
    assert_error(client.post("/predict", data=raw, content_type=content_type), status, code, words)
    assert files_in(model_dir) == before


def test_body_over_the_limit_gets_413(make_app, model_dir):
    client = make_app(max_request_mb=0.001).test_client()
    assert upload(client, models.identity(), "m").status_code == 201
    before = files_in(model_dir)
    response = predict(client, {"model_id": "m", "features": [1.0] * 2000})
    assert_error(response, 413, "too_large", "over the limit of 0.001 MB")
    assert files_in(model_dir) == before
    assert predict(client, {"model_id": "m", "features": [1.0] * 4}).status_code == 200


def test_failure_inside_the_model_is_a_json_error_without_internals(client, upload_model, model_dir):
    upload_model(models.reshape_to([5]), "reshaper")
    before = files_in(model_dir)
    response = predict(client, {"model_id": "reshaper", "features": [1, 2, 3, 4]})
    assert response.status_code in (400, 500)
    body = assert_error(response, response.status_code, response.get_json()["code"], "model")
    assert body["code"] in ("bad_input", "inference_failed")
    assert files_in(model_dir) == before
    assert "Traceback" not in body["error"] and ".cc:" not in body["error"] and "onnxruntime_src" not in body["error"]


@pytest.mark.parametrize(
    ("protect", "header", "status"),
    [(False, None, 200), (False, "Bearer wrong", 200), (True, None, 401), (True, "Bearer wrong", 401), (True, f"Bearer {TOKEN}", 200)],
)
def test_predict_is_open_unless_protected(make_app, protect, header, status):
    client = make_app(api_token=TOKEN, protect_predict=protect).test_client()
    assert upload(client, models.identity(), "m", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 201
    headers = {"Authorization": header} if header else {}
    response = predict(client, {"model_id": "m", "features": [1, 2, 3, 4]}, headers=headers)
    if status == 401:
        assert_error(response, 401, "unauthorized", "Bearer")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    else:
        assert response.status_code == 200 and response.get_json()["prediction"] == [1.0, 2.0, 3.0, 4.0]


def test_get_on_predict_is_405_json(client):
    assert_error(client.get("/predict"), 405, "method_not_allowed", "not allowed")


def test_a_scalar_output_is_a_number_on_predict_and_counted_as_what_the_client_got(client, upload_model):
    upload_model(models.total(), "sum")
    before = metric("model_predictions_total", model_id="sum", version="v1", status="success")
    response = predict(client, {"model_id": "sum", "features": [1, 2, 3, 4.5]})
    assert response.status_code == 200, response.get_json()
    body = strict_json(response)
    assert body["prediction"] == [10.5] and body["outputs"] == {"S": 10.5}
    assert metric("model_predictions_total", model_id="sum", version="v1", status="success") == before + 1
    v2 = client.post("/v2/models/sum/infer", json={"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4.5]}]})
    assert v2.get_json()["outputs"] == [{"name": "S", "datatype": "FP32", "shape": [], "data": [10.5]}]
