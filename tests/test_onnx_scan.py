"""nexus.onnx_scan.uses_external_data: every way a model can point a tensor at a file is found.

The hostile models are built by tests/hostile_models.py; the first tests check that the ones
onnxruntime would really read a file with are real attacks (a session made from their bytes,
with no protection, returns the file's bytes), so the scanner is tested against something real.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from nexus.onnx_scan import ProtobufError, external_locations, uses_external_data, weights_read
from tests import hostile_models as hostile
from tests import models

SECRET = b"nexus-scan-secret-4f1c9a7e2b"
LOCATIONS = [
    "secret.txt",                         # next to the model, or in the working directory
    "/etc/passwd",                        # absolute
    "../secret.txt",                      # one level up
    "../../../../../../../../etc/hostname",  # out of any directory
    "sub/../../secret.txt",
]


def _unprotected_run(data: bytes):
    """Run the model from bytes the way a careless server would: default options, cwd as it is."""
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(["Y"], {"X": np.zeros(1, np.float32)})[0]


@pytest.mark.parametrize("variant", hostile.ORT_READS)
def test_the_attacks_are_real_onnxruntime_reads_the_file_without_protection(variant, tmp_path, monkeypatch):
    (tmp_path / "secret.txt").write_bytes(SECRET)
    monkeypatch.chdir(tmp_path)
    leaked = _unprotected_run(hostile.EXTERNAL_VARIANTS[variant]("secret.txt", len(SECRET)))
    assert bytes(np.asarray(leaked, dtype=np.uint8)) == SECRET


def test_the_wide_graph_tag_is_read_as_the_graph_by_protobuf_in_cpp():
    data = hostile.external_wide_graph_tag("secret.txt", 8)
    assert data[2:7] == bytes([0x3A | 0x80, 0x80, 0x80, 0x80, 0x10])  # after ir_version (08 08)
    # onnx's C++ helpers parse with protobuf's C++ parser, like onnxruntime: the graph is there.
    parsed = onnx.shape_inference.infer_shapes(data)
    assert [n.op_type for n in parsed.graph.node] == ["Identity", "Identity"]
    assert parsed.graph.initializer[0].data_location == TensorProto.EXTERNAL
    # A walk that reads the key as a 64-bit number sees another field number than 7.
    key, _ = hostile._varint(data, 2)
    assert key >> 3 != 7 and (key & 0xFFFFFFFF) >> 3 == 7


def test_the_wide_enum_is_read_as_external():
    data = hostile.external_wide_enum("secret.txt", 8)
    assert hostile.encode_varint((1 << 32) | 1) in data
    assert onnx.load_from_string(data).graph.initializer[0].data_location == TensorProto.EXTERNAL


# -- every variant, every location: found ---------------------------------------------------------


@pytest.mark.parametrize("location", LOCATIONS)
@pytest.mark.parametrize("variant", sorted(hostile.EXTERNAL_VARIANTS))
def test_external_data_is_found_everywhere(variant, location):
    assert uses_external_data(hostile.EXTERNAL_VARIANTS[variant](location, 16)) is True


@pytest.mark.parametrize("high", [0x00, 0x10, 0x20, 0x70])
def test_an_overlong_graph_key_does_not_hide_the_graph(high):
    # 0x00: an over-long but exact encoding of 0x3A; 0x10..0x70: bits above 32 that the C++ parser drops.
    assert uses_external_data(hostile.external_wide_graph_tag("secret.txt", 16, high=high)) is True


@pytest.mark.parametrize(("number", "wire", "path"), [
    (7, 2, ()),         # ModelProto.graph
    (5, 2, (7,)),       # GraphProto.initializer
    (13, 2, (7, 5)),    # TensorProto.external_data
    (14, 0, (7, 5)),    # TensorProto.data_location
])
def test_an_overlong_key_anywhere_does_not_hide_the_tensor(number, wire, path):
    data = hostile.rewrite_keys(hostile.external_initializer("secret.txt", 16), number, wire, path)
    assert data != hostile.external_initializer("secret.txt", 16)
    assert uses_external_data(data) is True


def test_the_wide_keys_everywhere_variant():
    assert uses_external_data(hostile.external_wide_tensor_keys("/etc/passwd", 16)) is True


def test_the_existing_external_data_fixture_is_found():
    assert uses_external_data(models.external_data()) is True


def test_external_data_in_a_loop_body():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["acc_in", "W"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.UINT8, [16])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.UINT8, [16])],
        [hostile.external_tensor("W", "secret.txt", 16)],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "", "start"], ["Y"], body=body)], "g",
        [helper.make_tensor_value_info("M", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("Y", TensorProto.UINT8, [16])],
        [numpy_helper.from_array(np.zeros(16, np.uint8), "start")],
    )
    assert uses_external_data(helper.make_model(graph, opset_imports=hostile.OPSET).SerializeToString()) is True


# -- normal models: not found ---------------------------------------------------------------------


NORMAL = {
    "identity": models.identity,
    "identity_string": lambda: models.identity(TensorProto.STRING, [None]),
    "add_mul": models.add_mul,
    "linear": lambda: models.linear(8, 4)[0],
    "divide": models.divide,
    "reshape_to": lambda: models.reshape_to([2, 2]),
    "slow_loop": lambda: models.slow_loop(16),  # a subgraph with its own initializer
    "mlp": models.mlp,
    "load_time_bomb": hostile.load_time_bomb,
    "endless_loop": hostile.endless_loop,
    "fill": hostile.fill,
    "slow_to_load": hostile.slow_to_load,
    "string_identity": hostile.string_identity,
    "embedded_function_default": hostile.embedded_function_default,
    "wide_graph_tag_without_external_data": lambda: hostile.rewrite_keys(models.identity(), 7, 2),
}


@pytest.mark.parametrize("name", sorted(NORMAL))
def test_normal_models_do_not_use_external_data(name):
    assert uses_external_data(NORMAL[name]()) is False


def test_the_iris_classifier_does_not_use_external_data(iris_bytes):
    assert uses_external_data(iris_bytes) is False


def test_an_explicit_default_data_location_is_not_external():
    weights = numpy_helper.from_array(np.ones(4, np.float32), "W")
    weights.data_location = TensorProto.DEFAULT
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4])],
        [weights],
    )
    data = helper.make_model(graph, opset_imports=hostile.OPSET).SerializeToString()
    assert hostile.encode_varint(14 << 3) + b"\x00" in data  # the field is really there, set to 0
    assert uses_external_data(data) is False


def _with_payload(payload: bytes) -> bytes:
    """A normal model carrying ``payload`` as the raw bytes of a weight and as doc strings."""
    weights = numpy_helper.from_array(np.frombuffer(payload, np.uint8).copy(), "W")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["W"], ["Y"], doc_string=payload.decode("latin-1"))], "g", [],
        [helper.make_tensor_value_info("Y", TensorProto.UINT8, [len(payload)])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=hostile.OPSET)
    model.doc_string = payload.decode("latin-1")
    return model.SerializeToString()


def test_bytes_that_look_like_external_data_inside_weights_or_strings_are_not_read_as_fields():
    # The whole of an external-data model, as a weight's raw bytes and as doc strings: data, not fields.
    payload = hostile.external_initializer("secret.txt", 16)
    data = _with_payload(payload)
    assert payload in data
    assert uses_external_data(data) is False


# -- malformed bytes ------------------------------------------------------------------------------


MALFORMED = {
    "truncated_varint": b"\x08\x80",
    "truncated_wide_key": bytes([0x3A | 0x80, 0x80, 0x80]),
    "varint_over_10_bytes": b"\x08" + b"\x80" * 10 + b"\x01",
    "length_past_the_end": b"\x3a\x05ab",
    "field_number_0": b"\x00\x01",
    "wire_type_6": b"\x0e\x00",
    "wire_type_7": b"\x0f\x00",
    "fixed64_past_the_end": b"\x09\x00\x00",
    "fixed32_past_the_end": b"\x0d\x00",
    # graph (7) of 3 bytes holding an initializer (5) that claims 16 bytes
    "nested_field_past_its_message": b"\x3a\x03\x2a\x10\x00",
    # graph holding a node (1) holding an attribute (5) whose tensor (5) has a truncated varint
    "deeply_nested_truncated_varint": b"\x3a\x08\x0a\x06\x2a\x04\x2a\x02\x70\x81",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_bytes_raise_protobuf_error(name):
    with pytest.raises(ProtobufError):
        uses_external_data(MALFORMED[name])


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_a_model_cut_short_raises_protobuf_error(fraction):
    data = hostile.external_initializer("secret.txt", 16)
    with pytest.raises(ProtobufError):
        uses_external_data(data[: int(len(data) * fraction)])



# -- external_locations: which files a graph names --------------------------------------------------


def _initializers_at(*locations: str | None) -> bytes:
    """A graph whose initializers W0, W1... are external data at ``locations`` in turn (None: no location entry)."""
    tensors = [hostile.external_tensor(f"W{i}", location or "", 16, entries=location is not None)
               for i, location in enumerate(locations)]
    nodes = [helper.make_node("Identity", [t.name], [f"Y{i}"]) for i, t in enumerate(tensors)]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info(f"Y{i}", TensorProto.UINT8, [16])
                                               for i in range(len(tensors))], tensors)
    return helper.make_model(graph, opset_imports=hostile.OPSET).SerializeToString()


def test_external_locations_of_a_model_with_embedded_tensors_is_empty(iris_bytes):
    assert external_locations(models.mlp()) == set()
    assert external_locations(models.slow_loop(16)) == set()
    assert external_locations(iris_bytes) == set()


def test_external_locations_names_the_one_file():
    assert external_locations(hostile.external_initializer("w.bin")) == {"w.bin"}
    assert external_locations(hostile.external_entries_only("../w.bin")) == {"../w.bin"}


def test_external_locations_names_every_file_once():
    data = _initializers_at("a.bin", "b.bin", "a.bin", "/etc/passwd")
    assert external_locations(data) == {"a.bin", "b.bin", "/etc/passwd"}
    first = external_locations(data, first=True)
    assert len(first) == 1 and first <= {"a.bin", "b.bin", "/etc/passwd"}


def test_an_external_tensor_without_a_location_is_named_as_the_empty_string():
    assert external_locations(hostile.external_location_only("ignored")) == {""}
    assert external_locations(_initializers_at(None, "w.bin")) == {"", "w.bin"}


@pytest.mark.parametrize(("build", "where"), [
    (hostile.external_in_subgraph, "an If's branches"),
    (hostile.external_in_graphs_attribute, "a GRAPHS attribute"),
    (hostile.external_in_tensors_attribute, "a TENSORS attribute"),
    (hostile.external_constant, "a Constant's value"),
    (hostile.external_sparse_initializer, "a sparse initializer"),
    (hostile.external_function_default, "a function's attribute default"),
    (hostile.external_in_training_info, "training info"),
])
def test_external_locations_finds_nested_tensors(build, where):
    assert external_locations(build("nested.bin", 16)) == {"nested.bin"}, where


def test_external_locations_refuses_malformed_and_ort_format_bytes():
    with pytest.raises(ProtobufError):
        external_locations(MALFORMED["deeply_nested_truncated_varint"])
    with pytest.raises(ProtobufError, match="ORT-format"):
        external_locations(b"\x1c\x00\x00\x00ORTM" + b"\x00" * 16)


def _derived(tmp_path, nodes, inputs, outputs, initializers):
    """The serving graph onnxruntime writes for a model, and the size of its weights file."""
    from nexus.config import Settings
    from nexus.runtime import derive

    data = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializers),
                             opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    derive(data, str(tmp_path / "k.serving"), "k.serving.weights", Settings().limits)
    return (tmp_path / "k.serving").read_bytes(), (tmp_path / "k.serving.weights").stat().st_size


def test_weights_read_leaves_out_the_stored_form_of_weights_that_run_pre_packed(tmp_path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")  # 16 KiB, pre-packed twice
    e = numpy_helper.from_array(rng.standard_normal((100, 64)).astype(np.float32), "E")  # 25,600 bytes, read as stored
    graph, size = _derived(
        tmp_path,
        [helper.make_node("Gemm", ["x", "W"], ["g"], transB=1), helper.make_node("Gather", ["E", "i"], ["e"]),
         helper.make_node("MatMul", ["e", "W"], ["m"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64]), helper.make_tensor_value_info("i", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("g", TensorProto.FLOAT, None), helper.make_tensor_value_info("m", TensorProto.FLOAT, None)],
        [w, e],
    )
    assert weights_read(graph) == 2 * 16384 + 25600 < size == 3 * 16384 + 25600


def test_weights_read_counts_the_stored_form_of_a_weight_another_node_reads_as_it_is(tmp_path):
    """A tied weight: pre-packed for the MatMul, read as stored by the Gather."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")
    graph, size = _derived(
        tmp_path,
        [helper.make_node("Gather", ["W", "i"], ["e"]), helper.make_node("MatMul", ["e", "W"], ["m"])],
        [helper.make_tensor_value_info("i", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, None)],
        [w],
    )
    assert weights_read(graph) == size == 2 * 16384


def test_weights_read_refuses_what_it_cannot_read():
    with pytest.raises(ProtobufError):
        weights_read(b"\x0a\x02\x08")
