"""Triton's own HTTP client against the real server: metadata, readiness and inference, JSON and binary."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from tests import models
from tests.live.server import upload

httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def triton(live, iris_bytes):
    for model_id, data in {
        "mlp": models.mlp(seed=7),
        "pair": models.add_mul(),
        "words": models.identity(TensorProto.STRING, shape=(None, 3)),
        "classifier": iris_bytes,
    }.items():
        assert upload(live, data, model_id).status_code == 201
    client = httpclient.InferenceServerClient(f"127.0.0.1:{live.port}")
    yield client
    client.close()


def expected(model_bytes: bytes, feeds: dict[str, np.ndarray], names: list[str]) -> list:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(names, feeds)


def test_server_and_model_health(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("mlp") and not triton.is_model_ready("ghost")
    metadata = triton.get_model_metadata("mlp")
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 16]}]
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_fp32_mlp(triton, binary):
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    tensor = httpclient.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = triton.infer("mlp", [tensor], outputs=[httpclient.InferRequestedOutput("Y", binary_data=binary)])
    (want,) = expected(models.mlp(seed=7), {"X": x}, ["Y"])
    assert result.as_numpy("Y").dtype == np.float32
    assert np.array_equal(result.as_numpy("Y"), want)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_multi_input(triton, binary):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 0.5, dtype=np.float32)
    inputs = []
    for name, value in (("A", a), ("B", b)):
        tensor = httpclient.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("SUM", "PROD")]
    result = triton.infer("pair", inputs, outputs=outputs)
    want_sum, want_prod = expected(models.add_mul(), {"A": a, "B": b}, ["SUM", "PROD"])
    assert np.array_equal(result.as_numpy("SUM"), want_sum)
    assert np.array_equal(result.as_numpy("PROD"), want_prod)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_bytes_model(triton, binary):
    words = np.array([["alpha", "béta", ""], ["x", "y z", "🙂"]], dtype=np.object_)
    tensor = httpclient.InferInput("X", list(words.shape), "BYTES")
    tensor.set_data_from_numpy(words, binary_data=binary)
    result = triton.infer("words", [tensor], outputs=[httpclient.InferRequestedOutput("Y", binary_data=binary)])
    got = result.as_numpy("Y")
    decoded = [[v.decode() if isinstance(v, bytes) else v for v in row] for row in got.tolist()]
    assert decoded == words.tolist()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_skl2onnx_classifier(triton, iris_bytes, binary):
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("output_label", "output_probability")]
    result = triton.infer("classifier", [tensor], outputs=outputs)
    want_label, want_maps = expected(iris_bytes, {"input": x}, ["output_label", "output_probability"])
    assert np.array_equal(result.as_numpy("output_label"), want_label)
    keys = result.get_output("output_probability")["parameters"]["keys"]
    matrix = result.as_numpy("output_probability")
    assert matrix.shape == (3, len(keys))
    assert np.allclose(matrix, [[row[k] for k in keys] for row in want_maps], atol=1e-7)
