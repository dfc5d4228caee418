"""Small ONNX models built in memory for the tests (no files shipped, nothing downloaded)."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _model(nodes, inputs, outputs, initializers=()) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def identity(elem_type: int = TensorProto.FLOAT, shape=(None, 4), name: str = "X") -> bytes:
    """Y = X for any element type and shape (None or a string is a dynamic dimension)."""
    return _model(
        [helper.make_node("Identity", [name], ["Y"])],
        [helper.make_tensor_value_info(name, elem_type, list(shape))],
        [helper.make_tensor_value_info("Y", elem_type, list(shape))],
    )


def add_mul() -> bytes:
    """Two float inputs A and B of shape [N, 3]; outputs SUM = A + B and PROD = A * B."""
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 3]) for n in ("A", "B", "SUM", "PROD")]
    return _model(
        [helper.make_node("Add", ["A", "B"], ["SUM"]), helper.make_node("Mul", ["A", "B"], ["PROD"])],
        info[:2],
        info[2:],
    )


def linear(in_features: int = 4, out_features: int = 3, seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Y = X @ W + b on float32 [N, in]; returns the model and its weights to check answers."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((in_features, out_features)).astype(np.float32)
    bias = rng.standard_normal(out_features).astype(np.float32)
    model = _model(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "b"], ["Y"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, in_features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, out_features])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    return model, weights, bias


def divide() -> bytes:
    """Y = X / D with D = 0: every output is NaN or +-Infinity."""
    return _model(
        [helper.make_node("Div", ["X", "D"], ["Y"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 3])],
        [numpy_helper.from_array(np.zeros(3, dtype=np.float32), "D")],
    )


def reshape_to(shape: list[int]) -> bytes:
    """Reshapes X (float [N, 4]) to a fixed shape: fails at run time for most batch sizes."""
    return _model(
        [helper.make_node("Reshape", ["X", "S"], ["Y"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(np.array(shape, dtype=np.int64), "S")],
    )


def external_data() -> bytes:
    """A model whose initializer W points at a file next to it (ONNX external data)."""
    weights = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "W")
    weights.ClearField("raw_data")
    weights.data_location = TensorProto.EXTERNAL
    entry = weights.external_data.add()
    entry.key, entry.value = "location", "iris.onnx"
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"])],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4])],
        [weights],
    )
    return helper.make_model(graph, opset_imports=OPSET, ir_version=8).SerializeToString()


def iris_classifier() -> bytes:
    """A scikit-learn logistic regression on iris, converted with skl2onnx (label + ZipMap)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, labels = load_iris(return_X_y=True)
    classifier = LogisticRegression(max_iter=500).fit(features.astype(np.float32), labels)
    model = to_onnx(classifier, initial_types=[("input", FloatTensorType([None, 4]))], target_opset={"": 15, "ai.onnx.ml": 3})
    return model.SerializeToString()


def slow_loop(size: int = 256) -> bytes:
    """Runs a [size, size] MatMul N times, N given as input 'N' (int64 [1]): a prediction as slow as asked.

    Output Y (float [size, size]) is the last product; it exists so the loop cannot be optimised away.
    """
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((size, size)) / size).astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["acc_in", "W"], ["acc_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [size, size]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [size, size]),
        ],
        [numpy_helper.from_array(weights, "W")],
    )
    count = helper.make_node("Squeeze", ["N"], ["n"])
    loop = helper.make_node("Loop", ["n", "cond", "start"], ["Y"], body=body)
    return _model(
        [count, loop],
        [helper.make_tensor_value_info("N", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [size, size])],
        [numpy_helper.from_array(np.array(True), "cond"), numpy_helper.from_array(np.eye(size, dtype=np.float32), "start")],
    )


def mlp(in_features: int = 16, hidden: int = 32, out_features: int = 5, seed: int = 0) -> bytes:
    """A float32 MLP: Relu(X @ W1 + b1) @ W2 + b2 on [N, in_features]."""
    rng = np.random.default_rng(seed)
    arrays = {
        "W1": rng.standard_normal((in_features, hidden)).astype(np.float32),
        "b1": rng.standard_normal(hidden).astype(np.float32),
        "W2": rng.standard_normal((hidden, out_features)).astype(np.float32),
        "b2": rng.standard_normal(out_features).astype(np.float32),
    }
    return _model(
        [
            helper.make_node("MatMul", ["X", "W1"], ["H0"]),
            helper.make_node("Add", ["H0", "b1"], ["H1"]),
            helper.make_node("Relu", ["H1"], ["H"]),
            helper.make_node("MatMul", ["H", "W2"], ["Y0"]),
            helper.make_node("Add", ["Y0", "b2"], ["Y"]),
        ],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, in_features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, out_features])],
        [numpy_helper.from_array(v, k) for k, v in arrays.items()],
    )


def total() -> bytes:
    """S = sum of X (float [N, 4]) as a 0-d tensor (ReduceSum with keepdims=0)."""
    return _model(
        [helper.make_node("ReduceSum", ["X"], ["S"], keepdims=0)],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("S", TensorProto.FLOAT, [])],
    )


def tfidf_classifier(locale: str | None = None) -> bytes:
    """A scikit-learn TfidfVectorizer + logistic regression on four phrases, converted with skl2onnx.

    skl2onnx writes the en_US.UTF-8 locale into the StringNormalizer unless ``locale`` says otherwise.
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = np.array(["a good movie", "a bad movie", "a great film", "an awful film"])
    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, [1, 0, 1, 0])
    options = {id(pipeline.steps[1][1]): {"zipmap": False}}
    if locale is not None:
        options[id(pipeline.steps[0][1])] = {"locale": locale}
    model = to_onnx(pipeline, initial_types=[("text", StringTensorType([None, 1]))], options=options,
                    target_opset={"": 15, "ai.onnx.ml": 3})
    return model.SerializeToString()


def slow_iterations(seconds: float) -> int:
    """How many loop iterations of slow_loop() take about ``seconds`` on this machine."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(slow_loop(), options, providers=["CPUExecutionProvider"])
    timings = []
    for _ in range(3):  # the fastest of three: a busy machine makes a run slower, never faster
        started = time.perf_counter()
        session.run(None, {"N": np.array([400], np.int64)})
        timings.append((time.perf_counter() - started) / 400)
    return max(1, int(seconds / min(timings)))
